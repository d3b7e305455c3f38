"""Text that is no text, and text too long to tokenize: lone UTF-16 surrogates (JSON's "\\ud800", which the
tokenizer cannot encode; it crashed whole jobs and `audit`) are `invalid_text`, naming the field; a message over
max_message_chars is `message_too_long`. Both at parse, before anything downstream sees them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.errors import RecordError
from lossmask.pipeline.formats.checks import check_text
from lossmask.pipeline.read import decode
from lossmask.schemas.records import RawRecord, SourceRef

from ..support import FIXTURE_TOKENIZER
from .harness import conversation, jsonl, prepare_capped, run_capped

SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
_TEXT = st.text(max_size=8)  # hypothesis never draws surrogates here by itself


@st.composite
def text_with_surrogates(draw) -> tuple[str, bool]:
    text = draw(_TEXT)
    lone = draw(st.lists(st.tuples(st.integers(0, len(text)), SURROGATES), max_size=2))
    for position, surrogate in sorted(lone, reverse=True):
        text = text[:position] + surrogate + text[position:]
    return text, bool(lone)


_STRINGS = text_with_surrogates().map(lambda case: case[0])
VALUES = st.recursive(
    _STRINGS | st.integers() | st.none(),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_STRINGS, kids, max_size=3),
    max_leaves=8,
)


def _has_surrogate(value: object) -> bool:
    """The obvious reference: encode everything as UTF-8, strictly."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@settings(max_examples=300, deadline=None)
@given(value=VALUES)
def test_check_text_refuses_exactly_what_utf8_cannot_encode(value):
    if _has_surrogate(value):
        with pytest.raises(RecordError) as raised:
            check_text(value)
        assert raised.value.reason == "invalid_text"
        assert "lone surrogate U+D" in raised.value.detail
        raised.value.detail.encode("utf-8")  # written to _rejects.jsonl: a key's own surrogate is escaped
        (raised.value.field or "").encode("utf-8")
    else:
        check_text(value)


@settings(max_examples=200, deadline=None)
@given(text=_TEXT, high=st.integers(0xD800, 0xDBFF), low=st.integers(0xDC00, 0xDFFF))
def test_escaped_pairs_are_one_character_and_lone_halves_are_not(text, high, low):
    """What JSON spells as "\\uD83D\\uDE00" is one code point: fine. Either half alone is invalid_text."""
    for escapes, bad in ((f"\\u{high:04x}\\u{low:04x}", False), (f"\\u{high:04x}", True), (f"\\u{low:04x}", True)):
        line = json.dumps({"text": text})[:-2] + escapes + '"}'
        record = decode(RawRecord(SourceRef("f", 1), line=line.encode()))
        assert record.error is None
        if bad:
            with pytest.raises(RecordError, match="invalid_text"):
                check_text(record.value)
        else:
            check_text(record.value)
            record.value["text"].encode("utf-8")


def _surrogate_file(tmp_path):
    lines = [
        json.dumps(conversation("fine", "ok")),
        '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}',
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\\udfff b"}]}',
        '{"messages": [{"role": "user", "content": "q", "name": "\\udc00"}, {"role": "assistant", "content": "a"}]}',
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "\\ud801": 1}',
        '{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}, {"role": "assistant", "content": "a"}]}',
        '{"prompt": "p\\ud800", "completion": "c"}',
        json.dumps(conversation("also fine", "ok")),
    ]
    path = tmp_path / "surrogates.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def test_lone_surrogates_reject_their_record_only(tmp_path):
    path = _surrogate_file(tmp_path)
    run = prepare_capped(tmp_path, [path])
    assert (run.counts["read"], run.counts["written"]) == (8, 3)  # the two fine ones and the emoji
    assert run.rejected() == {f"{path}:{line}": "invalid_text" for line in (2, 3, 4, 5, 7)}
    fields = {r["source"].rsplit(":", 1)[1]: r.get("field") for r in run.rejects}
    assert fields["2"] == "messages[0].content"
    assert fields["3"] == "messages[1].content"
    assert "U+DFFF at character 1" in run.reject_at(f"{path}:3")["detail"]
    assert fields["4"] == "messages[0].name"
    assert fields["5"] == "\\ud801"  # the key itself, escaped


def test_audit_of_lone_surrogates_reports_them_and_judges_the_rows(tmp_path):
    """Raw inputs and the shards prepare wrote from them: no crash; the rejects are `records-not-written`, which
    `--fail-on error` does not gate (the rows are fine) and naming it does."""
    path = _surrogate_file(tmp_path)
    sample = run_capped(["audit", str(path), "--tokenizer", str(FIXTURE_TOKENIZER), "--json"])
    assert sample.returncode == 0, sample.stderr
    summary = json.loads(sample.stdout)
    assert summary["records"]["by_reason"]["rejected"] == {"invalid_text": 5}
    assert "records-not-written" in summary["fired"]
    shards = prepare_capped(tmp_path, [path]).out
    for target, code in (("error", 0), ("records-not-written", 1)):
        gated = run_capped(["audit", str(shards), "--fail-on", target, "-q"])
        assert gated.returncode == code, (target, gated.stderr)


def test_messages_over_max_message_chars_are_refused_in_every_format(tmp_path):
    """At the limit is fine; one character over is not, in a message, a reasoning, a prompt, a completion, a
    text; the detail says which and how long."""
    limit = 1000
    at, over = "x" * limit, "y" * (limit + 1)
    records = [
        conversation(at, at),
        conversation("q", over),
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": over}]},
        {"prompt": over, "completion": "c"},
        {"prompt": "p", "completion": over},
        {"prompt": at, "completion": at},
    ]
    texts = tmp_path / "texts.jsonl"
    texts.write_bytes(jsonl({"text": at}, {"text": over}))
    chats = tmp_path / "mixed.jsonl"
    chats.write_bytes(jsonl(*records[:3]))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(jsonl(*records[3:]))
    run = prepare_capped(tmp_path, [chats, pairs, texts], "--max-message-chars", str(limit))
    assert run.counts["written"] == 3
    assert run.rejected() == {
        f"{chats}:2": "message_too_long",
        f"{chats}:3": "message_too_long",
        f"{pairs}:1": "message_too_long",
        f"{pairs}:2": "message_too_long",
        f"{texts}:2": "message_too_long",
    }
    details = {r["source"]: r["detail"] for r in run.rejects}
    assert details[f"{chats}:2"].startswith(f"message 1 (assistant) has {limit + 1:,} characters")
    assert details[f"{chats}:3"].startswith("the reasoning of message 1")
    assert details[f"{pairs}:1"].startswith("the prompt")
    assert details[f"{pairs}:2"].startswith("the completion")
    assert details[f"{texts}:2"].startswith("the text")
    assert all(f"max_message_chars is {limit:,}" in d for d in details.values())
