"""The encoders (`pipeline/encoders.py`): tiktoken's BPE only where it gives the tokenizer's own ids, proven; offsets
from ids equal to `Encoding.offsets`; a disagreement during a job starts the job over with `tokenizers`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.pipeline import batch as batch_module
from lossmask.pipeline.encoders import (
    DIGITS_THEN_GPT2_PATTERN,
    GPT2_PATTERN,
    Encoded,
    TokenizersEncoder,
    fast_encoder,
    probe_texts,
    tiktoken_pattern,
)
from tokenizers import Tokenizer

from ..support import DATA, FIXTURE_TOKENIZER, REALWORLD, read_table, realworld, run_prepare

TOKENIZER = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
SPEC = json.loads(TOKENIZER.to_str())
FAST, WHY = fast_encoder(TOKENIZER)
REFERENCE = TokenizersEncoder(TOKENIZER)
# Text as the data has it: any characters but lone surrogates (the parse layer refuses those).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


def test_the_fixture_tokenizer_gets_the_fast_encoder():
    assert FAST is not None, WHY
    assert FAST.name == "tiktoken"


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_tiktoken_gives_the_tokenizers_ids_and_offsets(text):
    (fast,) = FAST.encode([text])
    (expected,) = REFERENCE.encode([text])
    assert fast.ids.tolist() == expected.ids.tolist()
    assert fast.offsets.tolist() == expected.offsets.tolist()


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_offsets_from_ids_equal_the_tokenizers_offsets(text):
    (ours,) = REFERENCE.encode([text])
    (encoding,) = TOKENIZER.encode_batch([text], add_special_tokens=False)
    assert ours.ids.tolist() == encoding.ids
    assert [tuple(o) for o in ours.offsets.tolist()] == encoding.offsets


def test_the_probe_corpus_covers_what_pre_tokenizers_look_at():
    texts = probe_texts(["<|im_start|>", "<|im_end|>"])
    joined = "".join(texts)
    for needle in ("  12", "\t\t7", "'ll", "😀", "\u0301", "½", "<|im_end|>", "\x04"):
        assert needle in joined, needle


@pytest.mark.parametrize(
    ("pre_tokenizer", "expected"),
    [
        ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, GPT2_PATTERN),
        (
            {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": True},
                    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                ],
            },
            DIGITS_THEN_GPT2_PATTERN,
        ),
        (
            {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": "\\p{L}+|\\s+"}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
                ],
            },
            "\\p{L}+|\\s+",
        ),
    ],
    ids=["gpt2", "digits-then-gpt2", "split-then-bytelevel"],
)
def test_the_regex_is_derived_from_the_pre_tokenizer(pre_tokenizer, expected):
    assert tiktoken_pattern({**SPEC, "pre_tokenizer": pre_tokenizer}) == (expected, "")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "no exact tiktoken translation"),
        ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "no exact tiktoken translation"),
        ({"normalizer": {"type": "NFC"}}, "normalizer"),
        ({"model": {**SPEC["model"], "byte_fallback": True}}, "byte fallback"),
        ({"model": {**SPEC["model"], "type": "Unigram"}}, "not BPE"),
    ],
)
def test_what_cannot_be_translated_exactly_is_refused(change, reason):
    pattern, why = tiktoken_pattern({**SPEC, **change})
    assert pattern is None and reason in why


def test_tokenizers_and_tiktoken_write_the_same_bytes(tmp_path):
    inputs = sorted(str(p) for p in DATA.glob("*.json*"))
    _, slow = run_prepare(tmp_path, inputs, encoder="tokenizers", out_name="slow")
    manifest, fast = run_prepare(tmp_path, inputs, encoder="tiktoken", out_name="fast")
    assert manifest["encoder"]["name"] == "tiktoken"
    assert read_table(slow).equals(read_table(fast))
    for shard in sorted(slow.glob("shard-*.arrow")):
        assert shard.read_bytes() == (fast / shard.name).read_bytes()


def test_a_disagreement_during_the_job_starts_it_over_with_tokenizers(tmp_path, monkeypatch):
    """A fast encoder that is wrong on one row: the sampled comparison catches it, and the job's shards are the
    `tokenizers` ones; the manifest says why."""

    class Wrong:
        name = "tiktoken"
        fallback = REFERENCE

        def encode(self, texts):
            out = REFERENCE.encode(texts)
            return [Encoded(np.flip(e.ids).copy(), e.offsets) for e in out]

    monkeypatch.setattr(batch_module, "fast_encoder", lambda tokenizer: (Wrong(), ""))
    inputs = [DATA / "openai.jsonl"]
    _, expected = run_prepare(tmp_path, inputs, encoder="tokenizers", out_name="expected")
    manifest, out = run_prepare(tmp_path, inputs, encoder="tiktoken", out_name="out", workers=1)
    assert manifest["encoder"]["name"] == "tokenizers"
    assert "disagree" in manifest["encoder"]["fell_back"]
    assert read_table(out).equals(read_table(expected))


@realworld
@pytest.mark.realworld
@pytest.mark.parametrize("name", ["smollm2", "mistral-nemo-tekken", "llama3-style"])
def test_the_kits_byte_level_tokenizers_get_a_proven_fast_encoder(name):
    tokenizer = Tokenizer.from_file(str(REALWORLD / "tokenizers" / name / "tokenizer.json"))
    fast, why = fast_encoder(tokenizer)
    assert fast is not None, why
    reference = TokenizersEncoder(tokenizer)
    texts = []
    for path in sorted((REALWORLD / "data").rglob("*.json*"))[:6]:
        texts += [line[:2000] for line in path.read_text(encoding="utf-8").splitlines()[:200]]
    for ours, expected in zip(fast.encode(texts), reference.encode(texts), strict=True):
        assert ours.ids.tolist() == expected.ids.tolist()


@realworld
@pytest.mark.realworld
def test_sentencepiece_keeps_tokenizers():
    tokenizer = Tokenizer.from_file(str(REALWORLD / "tokenizers" / "mistral-v3" / "tokenizer.json"))
    fast, why = fast_encoder(tokenizer)
    assert fast is None and "byte fallback" in why
