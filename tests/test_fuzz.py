"""Bad input at scale never crashes a run and never vanishes: random bytes, random JSON, deep nesting, huge
strings. Every non-blank line ends up written, rejected or dropped, and the counts add up."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lossmask.pipeline.batch import JobContext, process_batch
from lossmask.pipeline.config import PrepareConfig
from lossmask.schemas.records import RawRecord, SourceRef
from lossmask.schemas.shards import RowFlag

from .support import FIXTURE_TOKENIZER, read_rejects, read_rows, run_prepare

pytestmark = pytest.mark.slow  # hypothesis runs hundreds of examples, and 50 MB lines

CONTEXT = JobContext.from_config(PrepareConfig(tokenizer=str(FIXTURE_TOKENIZER)))
FORMATS = [None, "openai", "sharegpt", "alpaca", "prompt_completion", "text"]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "wizard", "", 3, None])
messages = st.lists(
    st.fixed_dictionaries(
        {}, optional={"role": roles, "content": json_values | st.text(max_size=40), "weight": json_values}
    ),
    max_size=5,
)
shaped = st.one_of(
    st.fixed_dictionaries({"messages": messages | json_values}),
    st.fixed_dictionaries(
        {
            "conversations": st.lists(
                st.fixed_dictionaries({}, optional={"from": roles, "value": json_values}), max_size=4
            )
        }
    ),
    st.fixed_dictionaries({"instruction": json_values, "output": json_values}, optional={"input": json_values}),
    st.fixed_dictionaries({"prompt": json_values, "completion": json_values}),
    st.fixed_dictionaries({"text": json_values | st.text()}),
    json_values,
)


def accounted(records: list[RawRecord]) -> None:
    result = process_batch(records, CONTEXT)
    assert len(result.outcomes) == len(records)
    assert [o.source for o in result.outcomes] == [r.source for r in records]
    assert all(o.status in ("written", "rejected", "dropped") for o in result.outcomes)
    assert sum(o.rows for o in result.outcomes) == len(result.rows)
    for outcome in result.outcomes:
        assert (outcome.status == "written") == (outcome.reason is None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(shaped, min_size=1, max_size=8), fmt=st.sampled_from(FORMATS))
def test_random_json_records_are_always_accounted(values, fmt):
    records = []
    for i, value in enumerate(values):
        record = RawRecord(SourceRef("fuzz.jsonl", i + 1, i), line=json.dumps(value).encode())
        record.extra["format"] = fmt
        records.append(record)
    accounted(records)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=80), min_size=1, max_size=10))
def test_random_bytes_lines_are_always_accounted(lines):
    accounted([RawRecord(SourceRef("bytes.jsonl", i + 1, i), line=line) for i, line in enumerate(lines)])


def test_random_byte_files_end_to_end(tmp_path):
    import random

    rng = random.Random(7)
    blob = bytes(rng.randrange(256) for _ in range(200_000)).replace(b"\r", b"")
    path = tmp_path / "noise.jsonl"
    path.write_bytes(blob)
    expected = sum(1 for line in blob.split(b"\n") if line.strip())
    manifest, out = run_prepare(tmp_path, [path])
    records = manifest["records"]
    assert records["read"] == expected == records["rejected"] + records["written"] + records["dropped"]
    assert len(read_rejects(out)) == records["rejected"] + records["dropped"]


def test_deep_nesting_and_huge_lines(tmp_path):
    lesson = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    huge_text = "word " * 400_000  # 2 MB of text in one message, tokenized whole
    path = tmp_path / "hard.jsonl"
    path.write_text(
        "\n".join(
            [
                "[" * 100_000 + "]" * 100_000,  # deeper than any JSON parser's recursion limit
                json.dumps({"messages": [{"role": "user", "content": "x"}] * 1000 + [lesson["messages"][1]]}),
                "x" * (50 << 20),  # a 50 MB line that is not JSON
                json.dumps(
                    {"messages": [{"role": "user", "content": huge_text}, {"role": "assistant", "content": "Ok."}]}
                ),
                json.dumps(lesson),
            ]
        )
        + "\n"
    )
    manifest, out = run_prepare(tmp_path, [path], max_length=256)
    records = manifest["records"]
    assert records["read"] == 5 == records["written"] + records["rejected"] + records["dropped"]
    reasons = {r["source"].rsplit(":", 1)[1]: r["reason"] for r in read_rejects(out)}
    assert reasons["1"] == "invalid_json" and reasons["3"] == "invalid_json"
    # 2 MB of text in one turn puts the answer past --max-length: dropped, not lost. The 1000-turn conversation
    # loses its earliest turns instead (turn-aware truncation) and keeps its answer.
    assert reasons["4"] == "no_trainable_tokens" and "2" not in reasons
    assert records["written"] == 2
    kept = next(row for row in read_rows(out) if row["source"].endswith(":2"))
    assert kept["flags"] & RowFlag.TURNS_DROPPED and kept["num_loss_tokens"] > 0
    # What stays counted is exactly the answer: as many targets as the same answer after a one-line question.
    alone = next(row for row in read_rows(out) if row["source"].endswith(":5"))
    assert kept["num_loss_tokens"] == alone["num_loss_tokens"] and not alone["flags"] & RowFlag.TURNS_DROPPED


@pytest.mark.parametrize("content", ["", " ", "\x00", "\ud800" * 0 + "\u0000\u0001", "🙂" * 1000])
def test_odd_but_valid_content(content):
    record = RawRecord(
        SourceRef("odd.jsonl", 1, 0),
        line=json.dumps(
            {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": content}]}
        ).encode(),
    )
    accounted([record])
