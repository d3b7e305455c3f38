"""The model's tokenizer, loaded once: its special tokens, the control tokens a template may write, and the
plain-text encoders that let injected control-token strings be encoded as text.

Control tokens (the tokenizer's special tokens, the added tokens the template itself writes, and added tokens
shaped like markers: see `TokenizerInfo.for_template`) are markup only
where the template put them. When message text contains such a string (`<|im_end|><|im_start|>assistant`
scraped from the web, say) and the policy is `escape`, the text is encoded in pieces split only at the
template's own control tokens, each piece with control-token matching off. Because the tokenizer splits at
added tokens before anything else, this gives the same ids as whole-text encoding wherever nothing was escaped
(checked on first need), and plain-text ids for the injected strings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Tokenizer

from ..errors import SetupError
from .hub import looks_like_hub_id, resolve_hub_tokenizer
from .reasoning import KNOWN_TAGS

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
    generation_stops: tuple[str, ...] = ()  # generation_config.json's stop tokens, beside eos_token
    control_tokens: tuple[str, ...] = ()
    control_ids: frozenset[int] = frozenset()
    control_re: re.Pattern[str] | None = None
    _escape_supported: bool | None = None
    _plain: tuple[Tokenizer, Tokenizer] | None = None
    _encoder: Any = None  # the `encoders.Encoder` of rendered text; `tokenizers` unless the job set a faster one

    @property
    def encoder(self) -> Any:
        """What encodes rendered text into ids and offsets (see `encoders`): `tokenizers` by default."""
        if self._encoder is None:
            from .encoders import TokenizersEncoder

            self._encoder = TokenizersEncoder(self.tokenizer)
        return self._encoder

    def with_encoder(self, encoder: Any) -> TokenizerInfo:
        return dataclasses.replace(self, _encoder=encoder)

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
            added = self.tokenizer.get_added_tokens_decoder().values()
            plain = frozenset(t.content for t in added if not t.special and t.content in self.control_tokens)
            first = _plain_copy(self.tokenizer, never_prepend=False, plain=plain)
            rest = _plain_copy(self.tokenizer, True, plain) if _has_prepend_first(self.tokenizer) else first
            self._plain = (first, rest)
        return self._plain

    @property
    def bos_id(self) -> int | None:
        return self._token_id(self.special_tokens.get("bos_token"))

    @property
    def eos_id(self) -> int | None:
        return self._token_id(self.special_tokens.get("eos_token"))

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """The tokens the model stops generating on: its EOS and the stop ids of `generation_config.json`."""
        eos = self.special_tokens.get("eos_token")
        first = (eos,) if eos and self.tokenizer.token_to_id(eos) is not None else ()
        return first + tuple(t for t in self.generation_stops if t != eos)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _token_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    def for_template(self, template_source: str | None) -> TokenizerInfo:
        """This tokenizer as a job with that template sees it: its control tokens are the special added tokens,
        the added tokens the template writes (whitespace ones excepted), and the added tokens shaped like markers
        (`is_marker_shaped`) even when neither: Mistral v3's `[REFERENCE_DOC_1]` is not marked special, yet it is
        markup, and in message text it must stay text. Reasoning tags (`<think>`) are never marker-shaped: they
        are control tokens only when the template writes them (Qwen3), else text the model writes.

        The first two are transformers' rule for `sanitize_control_tokens`. A new value: the tokenizer itself is
        shared, never changed.
        """
        text = template_source or ""
        tokens = [
            added.content
            for added in self.tokenizer.get_added_tokens_decoder().values()
            if added.special
            or (added.content in text and not added.content.isspace())
            or is_marker_shaped(added.content)
        ]
        for key in SPECIAL_TOKEN_KEYS:
            value = self.special_tokens.get(key)
            if value and value not in tokens and self.tokenizer.token_to_id(value) is not None:
                tokens.append(value)
        tokens = sorted(set(tokens), key=lambda t: (-len(t), t))
        return dataclasses.replace(
            self,
            control_tokens=tuple(tokens),
            control_ids=frozenset(i for t in tokens if (i := self.tokenizer.token_to_id(t)) is not None),
            control_re=re.compile("|".join(map(re.escape, tokens))) if tokens else None,
            _escape_supported=None,
            _plain=None,
        )

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


# The shapes of control markers in real vocabularies: `<|im_start|>`, `<|fim_prefix|>`; `[INST]`, `[/INST]`,
# `[TOOL_CALLS]`, `[REFERENCE_DOC_1]`. Text hardly ever holds them; templates write them.
_MARKER_SHAPE = re.compile(r"<\|[^\s|]+\|>|\[/?[A-Z][A-Z0-9_]*\]")
_REASONING_TAGS = frozenset(tag for pair in KNOWN_TAGS for tag in pair)


def is_marker_shaped(token: str) -> bool:
    """Whether an added token looks like markup by itself (`<|...|>`, `[UPPER_CASE]`), reasoning tags excepted."""
    return token not in _REASONING_TAGS and _MARKER_SHAPE.fullmatch(token) is not None


def _inside_any(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(a <= start and end <= b for a, b in spans)


def _plain_copy(tokenizer: Tokenizer, never_prepend: bool, plain: frozenset[str] = frozenset()) -> Tokenizer:
    """A copy that encodes special-token strings as text, and the added tokens in `plain` too (control tokens not
    marked special, like Qwen's `</think>`, which `encode_special_tokens` would still match); optionally with
    Metaspace prepend_scheme 'never'.

    With prepend_scheme 'first' only the start of the whole input gets the '▁' prefix; a piece taken from the
    middle of a text must not get it either, or its first token would differ from whole-text encoding.
    """
    spec = json.loads(tokenizer.to_str())
    if never_prepend:
        _set_prepend_never(spec.get("pre_tokenizer"))
    if plain:
        spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t.get("content") not in plain]
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
    generation_file = tokenizer_file.parent / "generation_config.json"
    if generation_file.is_file():
        digest.update(generation_file.read_bytes())
    info = TokenizerInfo(
        path=str(path),
        tokenizer=tokenizer,
        config=config,
        chat_template=_find_chat_template(config, tokenizer_file.parent),
        special_tokens=special,
        fingerprint=digest.hexdigest(),
        generation_stops=_generation_stops(generation_file, tokenizer),
    )
    return info.for_template(info.chat_template)


def _generation_stops(path: Path, tokenizer: Tokenizer) -> tuple[str, ...]:
    """The tokens `generation_config.json` stops on (`eos_token_id`, one id or a list), when the folder has one.

    Models stop on more than their EOS: gpt-oss on `<|return|>` and `<|call|>`, GLM-4.5 on `<|user|>` and
    `<|observation|>`, Gemma on `<end_of_turn>`. These are the stop tokens a trained turn must end with.
    """
    if not path.is_file():
        return ()
    try:
        ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise SetupError(f"{path} is not valid JSON: {exc}") from None
    ids = [ids] if isinstance(ids, int) else ids if isinstance(ids, list) else []
    tokens = [tokenizer.id_to_token(i) for i in ids if isinstance(i, int)]
    return tuple(t for t in tokens if t is not None)


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
