"""Text -> token ids and character offsets, exactly as the model's tokenizer encodes it, as NumPy arrays.

Two encoders, one contract (`Encoder.encode(texts) -> list[Encoded]`), both giving the ids of the HF
`tokenizers` `Tokenizer` the job was given:

- `TokenizersEncoder` (every tokenizer): `Tokenizer.encode_batch`. For byte-level BPE without a normalizer the
  character offsets are computed from the ids (each id stands for a fixed byte string, so its byte length is
  known; a UTF-8 byte -> character map turns byte ends into `Encoding.offsets` exactly), which skips building
  millions of Python tuples; every row checks that its tokens' bytes add up to the text's, else it takes
  `Encoding.offsets`.
- `TiktokenEncoder` (byte-level BPE whose pre-tokenizer translates exactly into one regex: GPT-2's,
  SmolLM2's digits-then-GPT-2 sequence, and the `Split(regex) + ByteLevel` of Llama 3, Qwen and Tekken): the
  same vocabulary and merges run by `tiktoken`'s Rust BPE, about 4x faster per core. The translation is
  derived from the tokenizer's own configuration (never written per tokenizer by hand) and refused for anything
  it cannot translate exactly; the encoder is then proven on a built-in probe corpus (`probe_texts`) against
  `tokenizers` before it is used, and a deterministic sample of the job's rows is compared again while it runs
  (`SAMPLE_EVERY`); a mismatch raises `EncoderMismatch`, and the job starts over with `tokenizers`.

Offsets are character offsets into the text, as `Encoding.offsets` gives them (a token that covers part of a
multi-byte character spans that whole character).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer

SAMPLE_EVERY = 97  # rows whose record index is a multiple of this are encoded by both encoders and compared
ENCODER_NAMES = ("auto", "tokenizers", "tiktoken")

# tokenizers' ByteLevel pre-tokenizer regex (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Digits(individual_digits=True) first, then GPT-2's regex within the pieces between digits, as one regex: each
# digit is its own piece; ` ?\p{N}+` can no longer match; a whitespace run right before a digit ends its piece,
# so it stays whole (in GPT-2's regex `\s+(?!\S)` would leave its last space for the next piece).
DIGITS_THEN_GPT2_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""


class EncoderMismatch(Exception):
    """The fast encoder gave other ids than `tokenizers` on a row of the job: the job must start over without it."""


@dataclass(slots=True)
class Encoded:
    ids: np.ndarray  # int32 (n,)
    offsets: np.ndarray  # int64 (n, 2): character [start, end) of each token


class Encoder(Protocol):
    name: str

    def encode(self, texts: list[str]) -> list[Encoded]: ...


class TokenizersEncoder:
    """`Tokenizer.encode_batch`, offsets from ids where the tokenizer is byte-level BPE (see the module's docstring)."""

    name = "tokenizers"

    def __init__(self, tokenizer: Tokenizer, spec: dict[str, Any] | None = None, lengths: np.ndarray | None = None):
        self.tokenizer = tokenizer
        spec = spec if spec is not None else json.loads(tokenizer.to_str())
        if _offsets_from_ids(spec):
            self.byte_lengths: np.ndarray | None = lengths if lengths is not None else _byte_lengths(tokenizer, spec)
        else:
            self.byte_lengths = None

    def encode(self, texts: list[str], add_special_tokens: bool = False) -> list[Encoded]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        ids = [np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings]
        if self.byte_lengths is not None and not add_special_tokens:
            offsets = batch_char_offsets(texts, ids, self.byte_lengths)
        else:
            offsets = [None] * len(texts)
        return [
            Encoded(row, found if found is not None else np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2))
            for row, found, encoding in zip(ids, offsets, encodings, strict=True)
        ]


class TiktokenEncoder:
    """The tokenizer's BPE run by tiktoken (see the module's docstring). Build it with `fast_encoder`."""

    name = "tiktoken"

    def __init__(
        self,
        encoding: Any,
        byte_lengths: np.ndarray,
        specials: frozenset[str],
        unsupported: re.Pattern[str] | None,
        fallback: TokenizersEncoder,
    ):
        self.encoding = encoding
        self.byte_lengths = byte_lengths
        self.specials = specials
        self.unsupported = unsupported  # characters with a byte the vocabulary lacks: tokenizers drops them
        # Those of them that are ASCII: all an ASCII text can hold (str.isascii() is O(1); `in` runs at memchr speed).
        ascii_chars = [chr(b) for b in range(128)]
        self.unsupported_ascii = [c for c in ascii_chars if unsupported is not None and unsupported.search(c)]
        self.fallback = fallback

    def encode(self, texts: list[str]) -> list[Encoded]:
        out: list[Encoded | None] = [None] * len(texts)
        ours = []
        for k, text in enumerate(texts):
            if self.unsupported is not None and self._unsupported(text):
                (out[k],) = self.fallback.encode([text])
            else:
                ours.append(k)
        ids = [self._ids(texts[k]) for k in ours]
        for k, row, offsets in zip(
            ours, ids, batch_char_offsets([texts[k] for k in ours], ids, self.byte_lengths), strict=True
        ):
            if offsets is None:  # cannot happen for a faithful translation; the row is refused, never guessed
                raise EncoderMismatch(f"tiktoken's tokens do not cover the text's bytes: {texts[k][:60]!r}")
            out[k] = Encoded(row, offsets)
        return [e for e in out if e is not None]

    def _unsupported(self, text: str) -> bool:
        """Whether the text holds a character of `unsupported`: for an ASCII text, one of its ASCII characters."""
        if text.isascii():
            return any(c in text for c in self.unsupported_ascii)
        return self.unsupported is not None and self.unsupported.search(text) is not None

    def _ids(self, text: str) -> np.ndarray:
        """The ids as int32, straight from tiktoken's token buffer (no Python list of ints in between; ids are
        below 2**31, so the uint32 buffer read as int32 is the same numbers). A text tiktoken's Rust side cannot
        take (lone surrogates) goes through `Encoding.encode`, which has its own fix-up for it."""
        try:
            return self.encoding.encode_to_numpy(text, allowed_special=self.specials).view(np.int32)
        except UnicodeEncodeError:
            return np.asarray(self.encoding.encode(text, allowed_special=self.specials), dtype=np.int32)


def fast_encoder(tokenizer: Tokenizer) -> tuple[TiktokenEncoder | None, str]:
    """(the tiktoken encoder, "") when the tokenizer translates exactly and the probe corpus agrees, else
    (None, why not)."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    spec = json.loads(tokenizer.to_str())
    pattern, why = tiktoken_pattern(spec)
    if pattern is None:
        return None, why
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    to_bytes = _byte_level_table()
    ranks: dict[bytes, int] = {}
    for token, rank in spec["model"]["vocab"].items():
        if token in added:
            continue
        try:
            ranks[token.translate(to_bytes).encode("latin-1")] = rank
        except UnicodeEncodeError:
            return None, f"vocabulary entry {token!r} is not byte-level"
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    unsupported, why = _unsupported_characters(missing)
    if why:
        return None, why
    if not _merges_follow_ids(spec["model"]):
        return None, "the merges are not in id order (tiktoken ranks merges by id)"
    try:
        encoding = tiktoken.Encoding("lossmask", pat_str=pattern, mergeable_ranks=ranks, special_tokens=added)
    except Exception as exc:  # tiktoken refuses the regex or the ranks: not translatable
        return None, f"tiktoken refuses the translation: {exc}"
    lengths = _byte_lengths(tokenizer, spec, ranks)
    reference = TokenizersEncoder(tokenizer, spec, lengths)
    encoder = TiktokenEncoder(encoding, lengths, frozenset(added), unsupported, reference)
    for text in probe_texts(list(added)):
        if not np.array_equal(encoder.encode([text])[0].ids, reference.encode([text])[0].ids):
            return None, f"tiktoken disagrees with tokenizers on the probe text {text[:40]!r}"
    return encoder, ""


def tiktoken_pattern(spec: dict[str, Any]) -> tuple[str | None, str]:
    """One regex equivalent to the tokenizer's pre-tokenizer, derived from its configuration, or (None, why)."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None, f"the model is {model.get('type')}, not BPE"
    if model.get("byte_fallback") or model.get("dropout") or model.get("continuing_subword_prefix"):
        return None, "the BPE uses byte fallback, dropout or a subword prefix"
    if model.get("end_of_word_suffix"):
        return None, "the BPE uses an end-of-word suffix"
    if spec.get("normalizer") is not None:
        return None, "the tokenizer has a normalizer"
    for token in spec.get("added_tokens", []):
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            return None, f"added token {token['content']!r} strips or matches whole words"
    steps = _pre_tokenizers(spec.get("pre_tokenizer"))
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and _plain_byte_level(steps[0], regex=True):
        return GPT2_PATTERN, ""
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and _plain_byte_level(steps[1], regex=True)
    ):
        return DIGITS_THEN_GPT2_PATTERN, ""
    if kinds == ["Split", "ByteLevel"] and _plain_byte_level(steps[1], regex=False):
        split = steps[0]
        regex = (split.get("pattern") or {}).get("Regex")
        if regex and split.get("behavior") == "Isolated" and not split.get("invert"):
            return regex, ""
    return None, f"the pre-tokenizer {'+'.join(map(str, kinds)) or 'none'} has no exact tiktoken translation"


def batch_char_offsets(texts: list[str], ids: list[np.ndarray], byte_lengths: np.ndarray) -> list[np.ndarray | None]:
    """`char_offsets` of every row at once: the rows laid end to end, so a batch costs a few NumPy calls."""
    if not texts:
        return []
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    counts = np.fromiter((row.size for row in ids), dtype=np.int64, count=len(ids))
    token_base = np.concatenate([[0], np.cumsum(counts)])
    ends = np.cumsum(byte_lengths[flat], dtype=np.int64)  # byte ends over the whole batch
    starts = ends - byte_lengths[flat]
    raw = np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8)
    row_bytes = np.fromiter(
        (len(t.encode("utf-8")) if not t.isascii() else len(t) for t in texts), np.int64, len(texts)
    )
    byte_base = np.concatenate([[0], np.cumsum(row_bytes)])
    covered = np.append(0, ends)[token_base]  # bytes the tokens of rows before each row cover
    whole = covered[1:] == byte_base[1:]  # a row is right when its tokens end exactly at its last byte
    fits = whole & (np.diff(covered) == row_bytes)
    is_start = (raw & 0xC0) != 0x80
    char_of_byte = np.cumsum(is_start) - 1 if raw.size else np.zeros(0, dtype=np.int64)
    char_base = np.concatenate([[0], np.cumsum([len(t) for t in texts])])
    offsets = np.empty((flat.size, 2), dtype=np.int64)
    if flat.size:
        row_of_token = np.repeat(np.arange(len(texts)), counts)
        safe_start = np.minimum(starts, max(raw.size - 1, 0))
        safe_end = np.clip(ends - 1, 0, max(raw.size - 1, 0))
        offsets[:, 0] = char_of_byte[safe_start] - char_base[row_of_token] if raw.size else 0
        offsets[:, 1] = char_of_byte[safe_end] + 1 - char_base[row_of_token] if raw.size else 0
    out: list[np.ndarray | None] = []
    for k in range(len(texts)):
        if not fits[k]:
            out.append(None)
            continue
        out.append(offsets[token_base[k] : token_base[k + 1]])
    return out


def char_offsets(text: str, ids: np.ndarray, byte_lengths: np.ndarray) -> np.ndarray | None:
    """Character offsets of the tokens `ids` of `text`, from their byte lengths; None when they do not add up to
    the text's UTF-8 bytes (then the tokenizer changed the text, and only its own offsets are right)."""
    ends = np.cumsum(byte_lengths[ids], dtype=np.int64)
    if text.isascii():
        if (ends[-1] if ends.size else 0) != len(text):
            return None
        return np.stack([ends - byte_lengths[ids], ends], axis=1)
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    if (ends[-1] if ends.size else 0) != raw.size:
        return None
    char_of_byte = np.cumsum((raw & 0xC0) != 0x80) - 1  # index of the character each byte belongs to
    starts = ends - byte_lengths[ids]
    offsets = np.empty((ids.size, 2), dtype=np.int64)
    offsets[:, 0] = char_of_byte[starts] if ids.size else starts
    offsets[:, 1] = char_of_byte[ends - 1] + 1 if ids.size else ends
    return offsets


def probe_texts(specials: list[str]) -> list[str]:
    """The built-in corpus both encoders must agree on: prose, code, numbers and whitespace runs in every place a
    pre-tokenizer rule looks at, contractions, scripts and emoji, the added tokens in text, and seeded random
    Unicode (no surrogates)."""
    texts = [
        "Hello world! It's a test: we'll see, they've said, I'm sure, you'd think, she's GREAT's.",
        "The year 2024 had 365 days; 3.14159 and 1,000,000 and 12ab34 and a1 b22  333   4444.",
        "  two spaces, then\ttabs\t\tand\nnewlines\n\n\nand   \n  mixed \r\n endings  ",
        "trailing spaces before digits:  12 and tabs\t\t7 and newline\n\n8",
        "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\n\tif x >= 10: pass",
        "中文文本，日本語のテキスト、한국어 텍스트。 Ελληνικά, русский, עברית, العربية, हिन्दी.",
        "Emoji 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 and combining e\u0301 a\u0308 and zero\u200bwidth and \ufeffbom.",
        "Fractions ½ ¾, superscripts x² y³, roman Ⅻ, Arabic digits ٣٤٥, full-width １２３.",
        "'S 'T 'RE 'VE 'M 'LL 'D vs 's 't 're 've 'm 'll 'd, and ''quoted'' text.",
        "URLs https://example.com/a?b=c&d=1#e and emails a.b@c.de and paths /usr/bin/env -v",
        "",
        " ",
        "\n",
        "a",
        "9",
        "control \x04\x06 bytes \x13\x14\x16\x1d and a rare plane \U00050000 character",
    ]
    texts.append(" ".join(specials) + " " + "".join(specials))
    texts.append("".join(f"text{s}more " for s in specials[:64]))
    rng = random.Random(20261201)
    alphabet = [chr(c) for c in range(0x20, 0x2FFF) if not 0xD800 <= c <= 0xDFFF]
    alphabet += list(" \t\n0123456789") * 20 + ["😀", "🏽", "\u200d", "\u0301"]
    for _ in range(64):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))))
    return texts


def _pre_tokenizers(node: Any) -> list[dict[str, Any]]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [step for child in node.get("pretokenizers", []) for step in _pre_tokenizers(child)]
    return [node]


def _plain_byte_level(step: dict[str, Any], regex: bool) -> bool:
    return not step.get("add_prefix_space") and bool(step.get("use_regex", True)) == regex


def _offsets_from_ids(spec: dict[str, Any]) -> bool:
    """Byte-level BPE without a normalizer and without offset trimming: each id is a fixed byte string."""
    steps = _pre_tokenizers(spec.get("pre_tokenizer"))
    processor = json.dumps(spec.get("post_processor"))
    return (
        (spec.get("model") or {}).get("type") == "BPE"
        and spec.get("normalizer") is None
        and any(step.get("type") == "ByteLevel" for step in steps)
        and '"trim_offsets": true' not in processor
    )


def _byte_lengths(tokenizer: Tokenizer, spec: dict[str, Any], ranks: dict[bytes, int] | None = None) -> np.ndarray:
    """Bytes each id stands for: its byte-level vocabulary string decoded, or an added token's UTF-8 content."""
    lengths = np.zeros(max(tokenizer.get_vocab_size(with_added_tokens=True), 1), dtype=np.int64)
    if ranks is None:
        to_bytes = _byte_level_table()
        ranks = {}
        for token, i in spec["model"]["vocab"].items():
            try:
                ranks[token.translate(to_bytes).encode("latin-1")] = i
            except UnicodeEncodeError:
                ranks[token.encode("utf-8")] = i
    for raw, i in ranks.items():
        lengths[i] = len(raw)
    for i, added in tokenizer.get_added_tokens_decoder().items():
        lengths[i] = len(added.content.encode("utf-8"))
    return lengths


# Which code points a UTF-8 lead byte of a 4-byte sequence starts (the rest are never valid in UTF-8 text).
_FOUR_BYTE_LEADS = {0xF0: (0x10000, 0x3FFFF), 0xF1: (0x40000, 0x7FFFF), 0xF2: (0x80000, 0xBFFFF),
                    0xF3: (0xC0000, 0xFFFFF), 0xF4: (0x100000, 0x10FFFF)}  # fmt: skip
_NEVER_IN_UTF8 = {0xC0, 0xC1, *range(0xF5, 0x100)}


def _unsupported_characters(missing: list[int]) -> tuple[re.Pattern[str] | None, str]:
    """A regex of the characters whose UTF-8 holds a byte the vocabulary lacks (text with them is encoded by
    `tokenizers`, which drops such bytes), or (None, why) when too many characters would be affected."""
    classes = []
    for byte in missing:
        if byte < 0x80:
            classes.append(re.escape(chr(byte)))
        elif byte in _FOUR_BYTE_LEADS:
            low, high = _FOUR_BYTE_LEADS[byte]
            classes.append(f"{chr(low)}-{chr(high)}")
        elif byte not in _NEVER_IN_UTF8:
            return None, f"the vocabulary lacks the byte 0x{byte:02x}, which many characters use"
    return (re.compile(f"[{''.join(classes)}]") if classes else None), ""


def _merges_follow_ids(model: dict[str, Any]) -> bool:
    """tiktoken merges by the rank (= id) of the result; `tokenizers` by the merge's place in the list. They
    agree when every merge's result has a larger id than the results of the merges before it."""
    vocab = model["vocab"]
    previous = -1
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        result = vocab.get(left + right)
        if result is None or result < previous:
            return False
        previous = result
    return True


def _byte_level_table() -> dict[int, int]:
    """`str.translate` table from GPT-2's byte-level characters to the Latin-1 character of their byte, so that
    `token.translate(table).encode("latin-1")` is the bytes a vocabulary entry stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {c: b for b, c in zip(printable, chars, strict=True)}
