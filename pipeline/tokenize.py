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
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..schemas.classes import TokenClass
from ..schemas.examples import RenderedExample, TokenizedExample
from ..schemas.shards import RowFlag
from .errors import RecordError, SetupError
from .hub import looks_like_hub_id, resolve_hub_tokenizer

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
    escape_supported: bool = True

    def __post_init__(self) -> None:
        self._plain_first = _plain_copy(self.tokenizer, never_prepend=False)
        self._plain_rest = _plain_copy(self.tokenizer, never_prepend=True)

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
        self.escape_supported = self._check_piecewise_encoding()

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
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        position = 0
        for start, end, token_id in [*cuts, (len(text), len(text), -1)]:
            if start > position:
                piece = text[position:start]
                encoder = self._plain_first if position == 0 else self._plain_rest
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
    """Encode every example in one `encode_batch` call (Rust, multi-threaded), then label each token."""
    results: list[TokenizedExample | RecordError] = []
    plain = [e for e in examples if not e.add_special_tokens]
    special = [e for e in examples if e.add_special_tokens]
    encodings: dict[int, Encoding] = {}
    for group, add in ((plain, False), (special, True)):
        if group:
            for example, encoding in zip(
                group, info.tokenizer.encode_batch([e.text for e in group], add_special_tokens=add), strict=True
            ):
                encodings[id(example)] = encoding
    for example in examples:
        try:
            results.append(label_tokens(info, example, encodings[id(example)]))
        except RecordError as exc:
            results.append(exc)
    return results


def label_tokens(info: TokenizerInfo, example: RenderedExample, encoding: Encoding) -> TokenizedExample:
    """Give each token the class of its characters and train it if any of its characters trains.

    A token that holds both trained and untrained characters counts (the model must produce it to produce the
    trained text; this is also transformers' rule for `{% generation %}` spans). When the untrained part is
    more than whitespace the row is flagged STRADDLE so the audit can show it.
    """
    flags = example.flags
    if example.escape:
        ids_list, offsets_list = info.encode_pieces(example.text, encoding, example.data_spans)
        flags |= RowFlag.SPECIAL_ESCAPED
    else:
        ids_list, offsets_list = encoding.ids, encoding.offsets
    ids = np.asarray(ids_list, dtype=np.int32)
    offsets = np.asarray(offsets_list, dtype=np.int64).reshape(-1, 2)
    n_chars = len(example.text)

    char_class = np.full(n_chars + 1, TokenClass.TEMPLATE, dtype=np.uint8)
    char_train = np.zeros(n_chars + 1, dtype=np.uint8)
    for span in example.spans:
        char_class[span.start : span.end] = span.cls
        if span.trainable:
            char_train[span.start : span.end] = 1
    text_array = np.frombuffer(example.text.encode("utf-32-le"), dtype=np.uint32)
    char_space = np.zeros(n_chars + 1, dtype=bool)
    char_space[:n_chars] = np.isin(text_array, _WHITESPACE_CODEPOINTS)

    starts = np.clip(offsets[:, 0], 0, n_chars)
    ends = np.clip(offsets[:, 1], 0, n_chars)
    train_cum = np.concatenate([[0], np.cumsum(char_train[:n_chars], dtype=np.int64)])
    solid_untrained = (~char_space[:n_chars]) & (char_train[:n_chars] == 0)
    solid_cum = np.concatenate([[0], np.cumsum(solid_untrained, dtype=np.int64)])
    trained_chars = train_cum[ends] - train_cum[starts]
    trainable = trained_chars > 0
    zero_width = ends <= starts
    if zero_width.any() and n_chars and char_train[:n_chars].all():
        trainable |= zero_width  # tokens a post-processor added to a fully trained text (BOS of plain text)

    # The class of a token is that of its first trained character, else of its first non-space character.
    next_trained = _next_index(char_train[:n_chars].astype(bool), n_chars)
    next_solid = _next_index(~char_space[:n_chars], n_chars)
    first_trained = next_trained[starts]
    first_solid = next_solid[starts]
    fallback = np.where(first_solid < ends, first_solid, starts)
    pick = np.where(trainable & (first_trained < ends), first_trained, fallback)
    classes = char_class[np.minimum(pick, n_chars)].copy()
    classes[zero_width] = TokenClass.TEMPLATE

    if np.any(trainable & ((solid_cum[ends] - solid_cum[starts]) > 0)):
        flags |= RowFlag.STRADDLE

    if example.append_eos:
        eos = info.eos_id
        if eos is None:
            raise RecordError("mask_verification_failed", "plain text needs an EOS token but the tokenizer has none")
        if ids.size == 0 or ids[-1] != eos:
            ids = np.append(ids, np.int32(eos))
            trainable = np.append(trainable, True)
            classes = np.append(classes, np.uint8(TokenClass.END_OF_TURN if example.turns else TokenClass.TEXT))

    _verify(info, example, ids, offsets, trainable)
    bos = info.bos_id
    if bos is not None and ids.size >= 2 and ids[0] == bos and ids[1] == bos:
        flags |= RowFlag.DOUBLE_BOS
    turn_ends = [int(np.searchsorted(starts, end, side="left")) for _, end in example.turns]
    return TokenizedExample(
        ids=ids,
        trainable=trainable.astype(np.uint8),
        classes=classes.astype(np.uint8),
        source=example.source,
        part=example.part,
        flags=int(flags),
        turn_ends=turn_ends,
    )


_WHITESPACE_CODEPOINTS = np.array([ord(c) for c in " \t\n\r\x0b\x0c\u00a0\u3000"], dtype=np.uint32)


def _next_index(mask: np.ndarray, n: int) -> np.ndarray:
    """For each position k (and k = n), the smallest j >= k with mask[j], or n when there is none."""
    index = np.where(mask, np.arange(n), n)
    out = np.empty(n + 1, dtype=np.int64)
    out[n] = n
    if n:
        out[:n] = np.minimum.accumulate(index[::-1])[::-1]
    return out


def _verify(
    info: TokenizerInfo, example: RenderedExample, ids: np.ndarray, offsets: np.ndarray, trainable: np.ndarray
) -> None:
    """Cheap per-row proof: control tokens only where the template put them, trained turns decode to their text."""
    if example.data_spans and info.control_ids and not (example.flags & RowFlag.SPECIAL_ALLOWED):
        control = np.isin(ids[: len(offsets)], np.fromiter(info.control_ids, dtype=np.int64))
        for k in np.flatnonzero(control):
            start, end = int(offsets[k, 0]), int(offsets[k, 1])
            if any(a < end and start < b for a, b in example.data_spans):
                raise RecordError(
                    "mask_verification_failed",
                    f"control token {info.tokenizer.id_to_token(int(ids[k]))!r} inside message text at char {start}",
                )
    for turn_start, turn_end in example.turns:
        inside = np.flatnonzero(trainable[: len(offsets)] & (offsets[:, 0] < turn_end) & (offsets[:, 1] > turn_start))
        if inside.size == 0:
            if turn_end > turn_start:
                detail = f"no token trains the turn at chars {turn_start}-{turn_end}"
                raise RecordError("mask_verification_failed", detail)
            continue
        first, last = int(inside[0]), int(inside[-1])
        decoded = info.tokenizer.decode(ids[first : last + 1].tolist(), skip_special_tokens=False)
        covered = example.text[int(offsets[first, 0]) : int(offsets[last, 1])]
        if "".join(decoded.split()) != "".join(covered.split()):
            raise RecordError(
                "mask_verification_failed",
                f"trained tokens decode to {decoded[:60]!r}, not the rendered {covered[:60]!r}",
            )
