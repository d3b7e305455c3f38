"""Stage 4, tokenize: rendered text with labeled characters -> token ids with a class and a train flag each.

Which tokens train follows from which characters do (`mask.tokens_trained`); this stage computes, never decides.

The whole rendered text is encoded once, with offsets, exactly as the model will see it at inference (the
ids equal `apply_chat_template(tokenize=True)`): pieces are never encoded separately and concatenated, since
tokens merge across boundaries. `add_special_tokens=False` for chat, because the template already wrote BOS.
Rows whose message text holds control-token strings are re-encoded by `TokenizerInfo.encode_pieces`.
"""

from __future__ import annotations

import numpy as np

from ..errors import RecordError
from ..schemas.classes import TokenClass
from ..schemas.examples import CharSpan, RenderedExample, TokenizedExample
from ..schemas.shards import RowFlag
from .encoders import SAMPLE_EVERY, Encoded, EncoderMismatch, TokenizersEncoder
from .mask import tokens_trained
from .tokenizer import TokenizerInfo

# RowFlag bits as plain ints: IntFlag arithmetic builds enum objects, which is slow on the per-row path.
_ALLOWED, _STRADDLE, _ESCAPED, _DOUBLE_BOS = (
    int(RowFlag.SPECIAL_ALLOWED),
    int(RowFlag.STRADDLE),
    int(RowFlag.SPECIAL_ESCAPED),
    int(RowFlag.DOUBLE_BOS),
)

_EDGE_TOKENS = 4  # tokens decoded at each end of a trained turn to verify it


def tokenize_batch(info: TokenizerInfo, examples: list[RenderedExample]) -> list[TokenizedExample | RecordError]:
    """Encode a batch and label every token, one result per example (a RecordError when a row fails to verify).

    The text is encoded by the tokenizer's encoder (`encoders`: `tokenizers`, or tiktoken where proven identical).
    Labeling is vectorized over the whole batch: the rows' tokens and character spans are laid end to end in one
    coordinate space, so a handful of numpy calls label every token of every row; only tokens that cross a span
    boundary are looked at one by one.
    """
    if not examples:
        return []
    encoded, flags = _encode(info, examples)
    lengths = np.fromiter((e.ids.size for e in encoded), dtype=np.int64, count=len(examples))
    token_base = np.concatenate([[0], np.cumsum(lengths)])
    text_length = np.fromiter((len(e.text) for e in examples), dtype=np.int64, count=len(examples))
    char_base = np.concatenate([[0], np.cumsum(text_length)])
    row_of_token = np.repeat(np.arange(len(examples)), lengths)
    ids = np.concatenate([e.ids for e in encoded])
    flat_offsets = np.concatenate([e.offsets for e in encoded])
    starts = flat_offsets[:, 0] + char_base[row_of_token]
    ends = flat_offsets[:, 1] + char_base[row_of_token]

    # Every row's spans, end to end: they cover the concatenated texts without gaps.
    spans = [(i, span) for i, e in enumerate(examples) for span in (e.spans or _whole_text(e))]
    span_row = np.fromiter((i for i, _ in spans), dtype=np.int64, count=len(spans))
    span_start = np.fromiter((s.start for _, s in spans), dtype=np.int64, count=len(spans)) + char_base[span_row]
    span_length = np.fromiter((s.end - s.start for _, s in spans), dtype=np.int64, count=len(spans))
    span_cls = np.fromiter((s.cls for _, s in spans), dtype=np.uint8, count=len(spans))
    span_train = np.fromiter((s.trainable for _, s in spans), dtype=bool, count=len(spans))
    trained_before = np.concatenate([[0], np.cumsum(span_length * span_train)])
    last = len(spans) - 1

    def span_of(pos: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(span_start, pos, side="right") - 1, 0, last)

    def trained_chars_before(pos: np.ndarray) -> np.ndarray:
        index = span_of(pos)
        return trained_before[index] + np.clip(pos - span_start[index], 0, span_length[index]) * span_train[index]

    first_span = span_of(starts)
    last_span = span_of(np.maximum(ends - 1, starts))
    classes = span_cls[first_span]
    zero_width = ends <= starts
    classes[zero_width] = TokenClass.TEMPLATE  # e.g. a BOS the post-processor added
    fully_trained = np.array([all(s.trainable for s in e.spans) and bool(e.spans) for e in examples], dtype=bool)
    trained_chars = trained_chars_before(ends) - trained_chars_before(starts)
    trainable = tokens_trained(trained_chars, zero_width, fully_trained[row_of_token])

    all_text = "".join(e.text for e in examples)
    for k in np.flatnonzero(first_span != last_span):  # tokens that cross a span boundary
        klass, straddles = _crossing_token(
            all_text,
            span_start,
            span_length,
            span_cls,
            span_train,
            int(first_span[k]),
            int(last_span[k]),
            starts[k],
            ends[k],
        )
        classes[k] = klass
        if straddles and trainable[k]:
            flags[row_of_token[k]] |= _STRADDLE

    failures = _verify_batch(info, examples, ids, starts, ends, trainable, row_of_token, char_base, token_base)
    results: list[TokenizedExample | RecordError] = []
    for i, example in enumerate(examples):
        if i in failures:
            results.append(failures[i])
            continue
        a, b = int(token_base[i]), int(token_base[i + 1])
        try:
            results.append(_finish_row(info, example, ids[a:b], trainable[a:b], classes[a:b], flags[i]))
        except RecordError as exc:
            results.append(exc)
    return results


def token_offsets(info: TokenizerInfo, examples: list[RenderedExample]) -> list[np.ndarray]:
    """The character [start, end) of each token `tokenize_batch` encodes for each example (before an appended EOS
    or stop), for checks that need to know where tokens begin (a preference pair's prompt boundary, `pairs`)."""
    return [encoded.offsets for encoded in _encode(info, examples)[0]]


def _encode(info: TokenizerInfo, examples: list[RenderedExample]) -> tuple[list[Encoded], list[int]]:
    """(ids and offsets, flags) per example, from the tokenizer's encoder (see `encoders`); escaped examples are
    re-encoded piecewise (see `encode_pieces`). A deterministic sample of rows encoded by a fast encoder is
    encoded by `tokenizers` too, and must agree (else `EncoderMismatch` stops the job, which starts over)."""
    encoded: list[Encoded | None] = [None] * len(examples)
    for add in (False, True):
        group = [i for i, e in enumerate(examples) if e.add_special_tokens == add]
        if not group:
            continue
        texts = [examples[i].text for i in group]
        encoder = info.encoder if not add else _reference(info)
        results = encoder.encode(texts) if not add else encoder.encode(texts, add_special_tokens=True)
        for i, result in zip(group, results, strict=True):
            encoded[i] = result
        if encoder is not _reference(info):
            _check_sample(info, [examples[i] for i in group], results)
    out: list[Encoded] = []
    flags: list[int] = []
    for example, result in zip(examples, encoded, strict=True):
        assert result is not None
        if example.escape:
            ids, offsets = info.encode_pieces(example.text, result, example.data_spans)
            result = Encoded(np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64).reshape(-1, 2))
            flags.append(example.flags | _ESCAPED)
        else:
            flags.append(example.flags)
        out.append(result)
    return out, flags


def _reference(info: TokenizerInfo) -> TokenizersEncoder:
    """The `tokenizers` encoder: the encoder itself, or the one a fast encoder is checked against."""
    return getattr(info.encoder, "fallback", None) or info.encoder


def _check_sample(info: TokenizerInfo, examples: list[RenderedExample], results: list[Encoded]) -> None:
    for example, result in zip(examples, results, strict=True):
        if example.source.index % SAMPLE_EVERY == 0:
            (expected,) = _reference(info).encode([example.text])
            if not np.array_equal(expected.ids, result.ids):
                raise EncoderMismatch(f"{info.encoder.name} and tokenizers disagree on {example.source}")


def _whole_text(example: RenderedExample) -> list[CharSpan]:
    return [CharSpan(0, len(example.text), int(TokenClass.TEMPLATE), False)]


def _crossing_token(
    text: str,
    span_start: np.ndarray,
    span_length: np.ndarray,
    span_cls: np.ndarray,
    span_train: np.ndarray,
    first: int,
    last: int,
    start: int,
    end: int,
) -> tuple[int, bool]:
    """(class, straddles) for a token over spans first..last: the class of the span holding most of its trained
    characters (else most of its non-space characters); it straddles when it mixes trained characters with
    untrained non-space ones (`▁The` after a header's space does not)."""
    best_trained = best_solid = (-1, int(span_cls[first]))
    trained_any = untrained_solid = False
    for s in range(first, last + 1):
        a, b = int(span_start[s]), int(span_start[s] + span_length[s])
        piece = text[max(start, a) : min(end, b)]
        solid = len(piece) - sum(ch.isspace() for ch in piece)
        if span_train[s]:
            trained_any = True
            best_trained = max(best_trained, (len(piece), int(span_cls[s])))
        elif solid:
            untrained_solid = True
        best_solid = max(best_solid, (solid, int(span_cls[s])))
    return (best_trained[1] if trained_any else best_solid[1]), (trained_any and untrained_solid)


def _verify_batch(
    info: TokenizerInfo,
    examples: list[RenderedExample],
    ids: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    trainable: np.ndarray,
    row_of_token: np.ndarray,
    char_base: np.ndarray,
    token_base: np.ndarray,
) -> dict[int, RecordError]:
    """Cheap proof for every row: control tokens only where the template put them, and each trained turn's
    tokens decode back to its rendered text. Returns the rows that fail, with why."""
    failures: dict[int, RecordError] = {}
    if info.control_ids:
        for k in _control_tokens_in_data(info, examples, ids, starts, ends, char_base):
            row = int(row_of_token[k])
            example = examples[row]
            if example.flags & _ALLOWED or row in failures:
                continue
            start, end = int(starts[k] - char_base[row]), int(ends[k] - char_base[row])
            if any(a < end and start < b for a, b in example.data_spans):
                token = info.tokenizer.id_to_token(int(ids[k]))
                detail = f"control token {token!r} inside message text at char {start}"
                failures[row] = RecordError("mask_verification_failed", detail)
    # Each trained turn's first and last trained token, for all turns at once.
    turn_row = np.fromiter((row for row, e in enumerate(examples) for _ in e.turns), dtype=np.int64)
    turn_start = np.fromiter((t[0] for e in examples for t in e.turns), dtype=np.int64) + char_base[turn_row]
    turn_end = np.fromiter((t[1] for e in examples for t in e.turns), dtype=np.int64) + char_base[turn_row]
    n = ids.size
    lo = np.maximum(np.searchsorted(ends, turn_start, side="right"), token_base[turn_row])
    hi = np.minimum(np.searchsorted(starts, turn_end, side="left"), token_base[turn_row + 1])
    positions = np.arange(n)
    next_trained = np.minimum.accumulate(np.where(trainable, positions, n)[::-1])[::-1] if n else positions
    prev_trained = np.maximum.accumulate(np.where(trainable, positions, -1)) if n else positions
    first = np.where(lo < n, next_trained[np.minimum(lo, n - 1)], n) if n else lo
    last = np.where(hi > 0, prev_trained[np.maximum(hi - 1, 0)], -1) if n else hi
    checks: list[tuple[int, int, int]] = []  # (row, first token, last token) of each trained turn
    for k in range(turn_row.size):
        row = int(turn_row[k])
        if first[k] < hi[k] and last[k] >= lo[k]:
            checks.append((row, int(first[k]), int(last[k])))
        elif turn_end[k] > turn_start[k] and row not in failures:
            detail = (
                f"no token trains the turn at chars {turn_start[k] - char_base[row]}-{turn_end[k] - char_base[row]}"
            )
            failures[row] = RecordError("mask_verification_failed", detail)
    # Decode the first and last tokens of each trained turn, where a wrong span or offset would show, and compare
    # them with the rendered text they cover (whitespace aside: decoders differ on leading spaces).
    pieces: list[tuple[int, int, int]] = []  # (row, first token, last token) of each piece to decode
    for row, first, last in checks:
        head = first + _EDGE_TOKENS - 1
        while head < last and starts[head + 1] < ends[head]:  # never cut through a character split over tokens
            head += 1
        tail = last - _EDGE_TOKENS + 1
        while tail > head + 1 and ends[tail - 1] > starts[tail]:
            tail -= 1
        if tail <= head + 1:
            pieces.append((row, first, last))
        else:
            pieces.append((row, first, head))
            pieces.append((row, tail, last))
    decoded = info.tokenizer.decode_batch([ids[a : b + 1].tolist() for _, a, b in pieces], skip_special_tokens=False)
    for (row, first, last), text in zip(pieces, decoded, strict=True):
        base = int(char_base[row])
        covered = examples[row].text[int(starts[first]) - base : int(ends[last]) - base]
        if "".join(text.split()) != "".join(covered.split()) and row not in failures:
            detail = f"trained tokens decode to {text[:60]!r}, not the rendered {covered[:60]!r}"
            failures[row] = RecordError("mask_verification_failed", detail)
    return failures


def _control_tokens_in_data(
    info: TokenizerInfo,
    examples: list[RenderedExample],
    ids: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    char_base: np.ndarray,
) -> np.ndarray:
    """The control tokens (in batch coordinates) that overlap some data span of their row, for the whole batch at
    once: the few the per-token check then looks at. A token [s, e) overlaps a span [a, b) when a < e and s < b; of
    the spans with a < e (a prefix, the spans sorted by start) some has b > s exactly when the largest end of that
    prefix does. Spans of other rows lie outside the row's characters, so they never overlap its tokens."""
    control = np.flatnonzero(np.isin(ids, np.fromiter(info.control_ids, dtype=np.int64)))
    if not control.size:
        return control
    span_row = np.fromiter((row for row, e in enumerate(examples) for _ in e.data_spans), dtype=np.int64)
    if not span_row.size:
        return control[:0]
    span_start = np.fromiter((a for e in examples for a, _ in e.data_spans), dtype=np.int64) + char_base[span_row]
    span_end = np.fromiter((b for e in examples for _, b in e.data_spans), dtype=np.int64) + char_base[span_row]
    order = np.argsort(span_start, kind="stable")
    span_start, max_end = span_start[order], np.maximum.accumulate(span_end[order])
    before = np.searchsorted(span_start, ends[control], side="left")  # spans with a < e
    hit = (before > 0) & (max_end[np.maximum(before - 1, 0)] > starts[control])
    return control[hit]


def _finish_row(
    info: TokenizerInfo,
    example: RenderedExample,
    ids: np.ndarray,
    trainable: np.ndarray,
    classes: np.ndarray,
    flags: int,
) -> TokenizedExample:
    if example.append_eos:
        eos = info.eos_id
        if eos is None:
            raise RecordError("mask_verification_failed", "plain text needs an EOS token but the tokenizer has none")
        if ids.size == 0 or ids[-1] != eos:
            ids = np.append(ids, np.int32(eos))
            trainable = np.append(trainable, example.eos_trains)
            classes = np.append(classes, np.uint8(TokenClass.END_OF_TURN if example.turns else TokenClass.TEXT))
    if example.append_stop is not None:
        stop = info.tokenizer.token_to_id(example.append_stop)
        if stop is None:
            raise RecordError("mask_verification_failed", f"the stop token {example.append_stop!r} is no token")
        ids = np.append(ids, np.int32(stop))
        trainable = np.append(trainable, example.eos_trains)
        classes = np.append(classes, np.uint8(TokenClass.END_OF_TURN))
    bos = info.bos_id
    if bos is not None and ids.size >= 2 and ids[0] == bos and ids[1] == bos:
        flags |= _DOUBLE_BOS
    return TokenizedExample(
        ids=ids,
        trainable=trainable.astype(np.uint8),
        classes=classes.astype(np.uint8, copy=False),
        source=example.source,
        part=example.part,
        flags=int(flags),
    )
