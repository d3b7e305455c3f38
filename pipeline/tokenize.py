"""Stage 4, tokenize: rendered text with labeled characters -> token ids with a class and a train flag each.

The whole rendered text is encoded once, with offsets, exactly as the model will see it at inference (the
ids equal `apply_chat_template(tokenize=True)`): pieces are never encoded separately and concatenated, since
tokens merge across boundaries. `add_special_tokens=False` for chat, because the template already wrote BOS.

Control tokens (the tokenizer's special tokens, and added tokens the template itself writes) are markup only
where the template put them. When message text contains such a string (`<|im_end|><|im_start|>assistant`
scraped from the web, say) and the policy is `escape`, the text is encoded in pieces split only at the
template's own control tokens, each piece with control-token matching off. Because the tokenizer splits at
added tokens before anything else, this gives the same ids as whole-text encoding wherever nothing was escaped
(checked when the tokenizer loads), and plain-text ids for the injected strings.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..schemas.classes import TokenClass
from ..schemas.examples import CharSpan, RenderedExample, TokenizedExample
from ..schemas.shards import RowFlag
from .errors import RecordError, SetupError
from .hub import looks_like_hub_id, resolve_hub_tokenizer

# RowFlag bits as plain ints: IntFlag arithmetic builds enum objects, which is slow on the per-row path.
_ALLOWED, _STRADDLE, _ESCAPED, _DOUBLE_BOS = (
    int(RowFlag.SPECIAL_ALLOWED),
    int(RowFlag.STRADDLE),
    int(RowFlag.SPECIAL_ESCAPED),
    int(RowFlag.DOUBLE_BOS),
)

_EDGE_TOKENS = 4  # tokens decoded at each end of a trained turn to verify it

SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
)


@dataclass
class TokenizerInfo:
    """A loaded tokenizer plus what lossmask needs to know about it: special tokens, control tokens, template."""

    path: str
    tokenizer: Tokenizer
    config: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    control_tokens: tuple[str, ...] = ()
    control_ids: frozenset[int] = frozenset()
    control_re: re.Pattern[str] | None = None
    _escape_supported: bool | None = None
    _plain: tuple[Tokenizer, Tokenizer] | None = None

    @property
    def escape_supported(self) -> bool:
        """Whether piecewise plain encoding reproduces whole-text encoding (checked once, on first need)."""
        if self._escape_supported is None:
            self._escape_supported = self._check_piecewise_encoding()
        return self._escape_supported

    def _plain_encoders(self) -> tuple[Tokenizer, Tokenizer]:
        """(for a piece at the start of the text, for a piece after it): built only when something is escaped,
        since copying a large tokenizer takes a while."""
        if self._plain is None:
            first = _plain_copy(self.tokenizer, never_prepend=False)
            rest = _plain_copy(self.tokenizer, never_prepend=True) if _has_prepend_first(self.tokenizer) else first
            self._plain = (first, rest)
        return self._plain

    @property
    def bos_id(self) -> int | None:
        return self._token_id(self.special_tokens.get("bos_token"))

    @property
    def eos_id(self) -> int | None:
        return self._token_id(self.special_tokens.get("eos_token"))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _token_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    def set_template(self, template_source: str | None) -> None:
        """Control tokens = special added tokens + added tokens the template writes (whitespace ones excepted).

        This is transformers' rule for `sanitize_control_tokens`; tokens that are neither (e.g. Mistral's
        `[REFERENCE_DOC_1]`) are ordinary vocabulary and may appear in text.
        """
        text = template_source or ""
        tokens = [
            added.content
            for added in self.tokenizer.get_added_tokens_decoder().values()
            if added.special or (added.content in text and not added.content.isspace())
        ]
        for key in SPECIAL_TOKEN_KEYS:
            value = self.special_tokens.get(key)
            if value and value not in tokens and self.tokenizer.token_to_id(value) is not None:
                tokens.append(value)
        tokens = sorted(set(tokens), key=lambda t: (-len(t), t))
        self.control_tokens = tuple(tokens)
        self.control_ids = frozenset(i for t in tokens if (i := self.tokenizer.token_to_id(t)) is not None)
        self.control_re = re.compile("|".join(map(re.escape, tokens))) if tokens else None
        self._escape_supported = None

    def find_control_tokens(self, text: str) -> list[str]:
        if self.control_re is None:
            return []
        return self.control_re.findall(text)

    def _check_piecewise_encoding(self) -> bool:
        """Piecewise plain encoding must equal whole-text encoding on text with no injected strings."""
        if not self.control_tokens:
            return True
        marker = self.control_tokens[-1]
        samples = [
            f"{marker}Hello world{marker} and  more  text\n\n{marker}",
            f"  leading space{marker}\ntrailing {marker}x{marker}  y ",
            f"{marker}\n{marker} 12345 héllo 😀 {marker}",
        ]
        for text in samples:
            whole = self.tokenizer.encode(text, add_special_tokens=False)
            ids, _ = self.encode_pieces(text, whole, data_spans=[])
            if ids != whole.ids:
                return False
        return True

    def encode_pieces(
        self, text: str, whole: Encoding, data_spans: list[tuple[int, int]]
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Encode `text` split only at the control tokens that lie outside `data_spans`; the rest is plain text."""
        cuts: list[tuple[int, int, int]] = []
        for token_id, (start, end) in zip(whole.ids, whole.offsets, strict=True):
            if token_id in self.control_ids and not _inside_any(start, end, data_spans):
                cuts.append((start, end, token_id))
        plain_first, plain_rest = self._plain_encoders()
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        position = 0
        for start, end, token_id in [*cuts, (len(text), len(text), -1)]:
            if start > position:
                piece = text[position:start]
                encoder = plain_first if position == 0 else plain_rest
                encoding = encoder.encode(piece, add_special_tokens=False)
                ids.extend(encoding.ids)
                offsets.extend((a + position, b + position) for a, b in encoding.offsets)
            if token_id >= 0:
                ids.append(token_id)
                offsets.append((start, end))
            position = max(position, end)
        return ids, offsets


def _inside_any(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(a <= start and end <= b for a, b in spans)


def _plain_copy(tokenizer: Tokenizer, never_prepend: bool) -> Tokenizer:
    """A copy that encodes special-token strings as text; optionally with Metaspace prepend_scheme 'never'.

    With prepend_scheme 'first' only the start of the whole input gets the '▁' prefix; a piece taken from the
    middle of a text must not get it either, or its first token would differ from whole-text encoding.
    """
    spec = json.loads(tokenizer.to_str())
    if never_prepend:
        _set_prepend_never(spec.get("pre_tokenizer"))
    copy_ = Tokenizer.from_str(json.dumps(spec))
    copy_.encode_special_tokens = True
    return copy_


def _has_prepend_first(tokenizer: Tokenizer) -> bool:
    return '"prepend_scheme":"first"' in tokenizer.to_str().replace(" ", "")


def _set_prepend_never(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first":
            node["prepend_scheme"] = "never"
        for value in node.values():
            _set_prepend_never(value)
    elif isinstance(node, list):
        for value in node:
            _set_prepend_never(value)


def load_tokenizer(path: str) -> TokenizerInfo:
    """A `tokenizer.json`, a Hugging Face model folder (tokenizer.json + tokenizer_config.json), or a Hub id
    `org/name[@revision]` when no such local path exists (see `hub` for the precedence and the offline rule)."""
    location = Path(path)
    if not location.exists() and looks_like_hub_id(path):
        location = resolve_hub_tokenizer(path)
    if location.is_dir():
        tokenizer_file = location / "tokenizer.json"
        config_file = location / "tokenizer_config.json"
        if not tokenizer_file.is_file():
            raise SetupError(f"tokenizer folder {path} has no tokenizer.json (a fast tokenizer is needed)")
    elif location.is_file():
        tokenizer_file = location
        config_file = location.with_name("tokenizer_config.json")
    else:
        raise SetupError(
            f"tokenizer {path!r} does not exist; pass a tokenizer.json, a model folder or a Hub id org/name"
        )
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:
        raise SetupError(f"tokenizer {tokenizer_file} could not be loaded: {exc}") from None
    config: dict[str, Any] = {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SetupError(f"{config_file} is not valid JSON: {exc}") from None
    special = {key: value for key in SPECIAL_TOKEN_KEYS if (value := _token_string(config.get(key)))}
    digest = hashlib.sha256(tokenizer_file.read_bytes())
    if config_file.is_file():
        digest.update(config_file.read_bytes())
    info = TokenizerInfo(
        path=str(path),
        tokenizer=tokenizer,
        config=config,
        chat_template=_find_chat_template(config, tokenizer_file.parent),
        special_tokens=special,
        fingerprint=digest.hexdigest(),
    )
    info.set_template(info.chat_template)
    return info


def _token_string(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _find_chat_template(config: dict[str, Any], folder: Path) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: take "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str):
        return template
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    json_file = folder / "chat_template.json"
    if json_file.is_file():
        value = json.loads(json_file.read_text(encoding="utf-8")).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def tokenize_batch(info: TokenizerInfo, examples: list[RenderedExample]) -> list[TokenizedExample | RecordError]:
    """Encode a batch and label every token, one result per example (a RecordError when a row fails to verify).

    The text is encoded with one `encode_batch` call (Rust, multi-threaded). Labeling is vectorized over the whole
    batch: the rows' tokens and character spans are laid end to end in one coordinate space, so a handful of
    numpy calls label every token of every row; only tokens that cross a span boundary are looked at one by one.
    """
    if not examples:
        return []
    ids_rows, offset_rows, flags = _encode(info, examples)
    lengths = np.fromiter((len(r) for r in ids_rows), dtype=np.int64, count=len(examples))
    token_base = np.concatenate([[0], np.cumsum(lengths)])
    text_length = np.fromiter((len(e.text) for e in examples), dtype=np.int64, count=len(examples))
    char_base = np.concatenate([[0], np.cumsum(text_length)])
    row_of_token = np.repeat(np.arange(len(examples)), lengths)
    ids = np.fromiter(itertools.chain.from_iterable(ids_rows), dtype=np.int32, count=int(token_base[-1]))
    flat_offsets = np.fromiter(
        itertools.chain.from_iterable(itertools.chain.from_iterable(offset_rows)), dtype=np.int64, count=2 * ids.size
    ).reshape(-1, 2)
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

    trainable = (trained_chars_before(ends) - trained_chars_before(starts)) > 0
    first_span = span_of(starts)
    last_span = span_of(np.maximum(ends - 1, starts))
    classes = span_cls[first_span]
    zero_width = ends <= starts
    if zero_width.any():
        classes[zero_width] = TokenClass.TEMPLATE
        fully_trained = np.array([all(s.trainable for s in e.spans) and bool(e.spans) for e in examples])
        trainable |= zero_width & fully_trained[row_of_token]  # BOS a post-processor added to plain text

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
            results.append(
                _finish_row(info, example, ids[a:b], trainable[a:b], classes[a:b], starts[a:b] - char_base[i], flags[i])
            )
        except RecordError as exc:
            results.append(exc)
    return results


def _encode(info: TokenizerInfo, examples: list[RenderedExample]) -> tuple[list[list[int]], list[Any], list[int]]:
    """(ids, offsets, flags) per example; escaped examples are re-encoded piecewise (see `encode_pieces`)."""
    encodings: list[Encoding | None] = [None] * len(examples)
    for add in (False, True):
        group = [i for i, e in enumerate(examples) if e.add_special_tokens == add]
        if group:
            for i, encoding in zip(
                group,
                info.tokenizer.encode_batch([examples[i].text for i in group], add_special_tokens=add),
                strict=True,
            ):
                encodings[i] = encoding
    ids_rows: list[list[int]] = []
    offset_rows: list[Any] = []
    flags: list[int] = []
    for example, encoding in zip(examples, encodings, strict=True):
        assert encoding is not None
        if example.escape:
            ids, offsets = info.encode_pieces(example.text, encoding, example.data_spans)
            flags.append(example.flags | _ESCAPED)
        else:
            ids, offsets = encoding.ids, encoding.offsets
            flags.append(example.flags)
        ids_rows.append(ids)
        offset_rows.append(offsets)
    return ids_rows, offset_rows, flags


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
        for k in np.flatnonzero(np.isin(ids, np.fromiter(info.control_ids, dtype=np.int64))):
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


def _finish_row(
    info: TokenizerInfo,
    example: RenderedExample,
    ids: np.ndarray,
    trainable: np.ndarray,
    classes: np.ndarray,
    starts: np.ndarray,
    flags: int,
) -> TokenizedExample:
    if example.append_eos:
        eos = info.eos_id
        if eos is None:
            raise RecordError("mask_verification_failed", "plain text needs an EOS token but the tokenizer has none")
        if ids.size == 0 or ids[-1] != eos:
            ids = np.append(ids, np.int32(eos))
            trainable = np.append(trainable, True)
            classes = np.append(classes, np.uint8(TokenClass.END_OF_TURN if example.turns else TokenClass.TEXT))
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
        turn_ends=[int(np.searchsorted(starts, end, side="left")) for _, end in example.turns],
    )
