"""Per-row verification must hold on text whose characters are split over several byte-level tokens."""

from __future__ import annotations

from .support import read_rejects, run_prepare, write_jsonl

SPLIT_CHARACTERS = "विकल्प ભાષા 😀😀 ✓ 漢字かな"  # Devanagari, Gujarati, emoji, CJK: bytes split across tokens


def test_answers_with_characters_split_over_tokens_verify(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": "Say it"}, {"role": "assistant", "content": SPLIT_CHARACTERS * n}]}
        for n in (1, 2, 5, 20)
    ]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    manifest, out = run_prepare(tmp_path, [path])
    assert manifest["records"]["written"] == 4, read_rejects(out)
