"""--pack and --concat: properties of the rows they make (hypothesis, on the combiners and their Arrow form), and
the same facts end to end through `prepare`."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.cli import main
from lossmask.errors import SetupError
from lossmask.pipeline.combine import Concatenator, Output, Packer
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.packed import cu_seqlens, packed_rows_to_batch
from lossmask.pipeline.shift import Row
from lossmask.schemas.shards import PACKED_SHARD_SCHEMA, RowFlag

from .support import DATA, FIXTURE_TOKENIZER, ROOT, read_rows, run_prepare

CHAT = [DATA / "openai.jsonl", DATA / "sharegpt.json", DATA / "tools.jsonl", DATA / "prompt_completion.jsonl"]


def document(index: int, part: int, tokens: list[int], mask: list[int]) -> Row:
    ids = np.array(tokens, dtype=np.int32)
    return Row(
        input_ids=ids[:-1],
        target_ids=ids[1:],
        loss_mask=np.array(mask[1:], dtype=np.uint8),
        token_class=np.full(ids.size - 1, 5, dtype=np.uint8),
        source=f"in.jsonl:{index + 1}",
        record_index=index,
        part=part,
        flags=0,
    )


@st.composite
def records(draw: st.DrawFn, max_positions: int) -> list[list[Row]]:
    """Records of 0-2 documents each, of 1..max_positions positions, with distinct token values and counted
    targets, so that every token says where it came from: 1000 * (document number) + position."""
    out: list[list[Row]] = []
    number = 0
    for index in range(draw(st.integers(0, 30))):
        rows = []
        for part in range(draw(st.integers(0, 2))):
            n = draw(st.integers(1, max_positions)) + 1
            mask = [1] * n if draw(st.booleans()) else [draw(st.integers(0, 1)) for _ in range(n - 1)] + [1]
            rows.append(document(index, part, [1000 * number + k for k in range(n)], mask))
            number += 1
        out.append(rows)
    return out


def run(combiner: Packer | Concatenator, data: list[list[Row]]) -> list[Output]:
    outputs = [o for index, rows in enumerate(data) for o in combiner.add(index, rows)]
    return outputs + combiner.finish()


def table(outputs: list[Output]) -> dict[str, list[Any]]:
    rows = [row for output in outputs for row in output.rows]
    batch = packed_rows_to_batch(rows)
    assert batch.schema.equals(PACKED_SHARD_SCHEMA, check_metadata=True)
    return pa.Table.from_batches([batch]).to_pydict()


def segments(data: dict[str, list[Any]], r: int) -> list[tuple[int, int]]:
    """(start, end) of each segment of row r, from its segment_ids."""
    cuts = cu_seqlens(np.array(data["segment_ids"][r])).tolist()
    return list(itertools.pairwise(cuts))


def check_row_layout(data: dict[str, list[Any]], r: int, length: int) -> None:
    n = data["num_tokens"][r]
    assert n == len(data["input_ids"][r]) <= length
    assert data["num_loss_tokens"][r] == sum(data["loss_mask"][r])
    spans = segments(data, r)
    assert [data["segment_ids"][r][a] for a, _ in spans] == list(range(len(spans)))  # segments count up from 0
    assert len(spans) == len(data["source"][r]) == len(data["record_index"][r]) == len(data["part"][r])
    for a, b in spans:
        assert data["position_ids"][r][a:b] == list(range(b - a))  # positions restart at every segment start
        inputs, targets = data["input_ids"][r][a:b], data["target_ids"][r][a:b]
        assert inputs[1:] == targets[:-1]  # shifted inside the segment
        assert len({t // 1000 for t in inputs + targets}) == 1  # no target from another document


@settings(max_examples=150, deadline=None)
@given(data=st.data(), length=st.integers(1, 24), window=st.integers(0, 12))
def test_packing_keeps_every_document_once_whole_and_in_order(data, length, window):
    docs = data.draw(records(length))
    out = table(run(Packer(length, window), docs))
    seen: dict[int, list[int]] = {}
    for r in range(len(out["num_tokens"])):
        check_row_layout(out, r, length)
        for k, (a, b) in enumerate(segments(out, r)):
            tokens = out["input_ids"][r][a:b] + out["target_ids"][r][b - 1 : b]
            number = tokens[0] // 1000
            assert number not in seen  # exactly once
            seen[number] = tokens
            assert (out["record_index"][r][k], out["part"][r][k]) == _origin(docs, number)
    every = {row.input_ids[0] // 1000: [*row.input_ids.tolist(), int(row.target_ids[-1])] for rs in docs for row in rs}
    assert seen == every  # whole, in order
    assert table(run(Packer(length, window), docs)) == out  # the same input gives the same rows


def _origin(docs: list[list[Row]], number: int) -> tuple[int, int]:
    row = next(row for rows in docs for row in rows if row.input_ids[0] // 1000 == number)
    return row.record_index, row.part


@settings(max_examples=150, deadline=None)
@given(data=st.data(), length=st.integers(1, 24))
def test_concat_cuts_the_stream_of_documents_into_rows_of_exactly_n(data, length):
    docs = data.draw(records(2 * length))
    outputs = run(Concatenator(length), docs)
    out = table(outputs)
    rows = len(out["num_tokens"])
    for r in range(rows):
        check_row_layout(out, r, length)
    assert all(n == length for n in out["num_tokens"][:-1])  # every row but the last is full
    # The rows are the stream of (input, target, counted) positions cut every N, less the chunks with no counted
    # target, which are dropped and counted.
    stream = [
        (int(i), int(t), int(m))
        for rs in docs
        for row in rs
        for i, t, m in zip(row.input_ids, row.target_ids, row.loss_mask, strict=True)
    ]
    chunks = [stream[k : k + length] for k in range(0, len(stream), length)]
    kept = [chunk for chunk in chunks if any(m for _, _, m in chunk)]
    assert [
        list(zip(out["input_ids"][r], out["target_ids"][r], out["loss_mask"][r], strict=True)) for r in range(rows)
    ] == kept
    if outputs:
        assert outputs[-1].counts["rows"] == rows
    combiner = Concatenator(length)
    run(combiner, docs)
    assert combiner.counts["rows_dropped"] == len(chunks) - len(kept)
    # Pieces: a document cut across rows is flagged WINDOW on each piece, and its parts count up by record.
    for r in range(rows):
        for k, (a, b) in enumerate(segments(out, r)):
            number = out["input_ids"][r][a] // 1000
            whole = next(row for rs in docs for row in rs if row.input_ids[0] // 1000 == number)
            assert bool(out["flags"][r][k] & RowFlag.WINDOW) == (b - a < whole.num_tokens)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), length=st.integers(1, 16), window=st.integers(1, 8))
def test_a_combiner_rebuilt_from_any_outputs_resume_state_makes_the_same_rest(data, length, window):
    """What a resumed run relies on: from an output's `resume` and `counts`, as the checkpoint stores them (JSON),
    re-reading records from resume.replay_from gives exactly the outputs after it, and the same final counts."""
    docs = data.draw(records(length))
    makers = [
        lambda resume=None, counts=None: Packer(length, window, resume, counts),
        lambda resume=None, counts=None: Concatenator(length, resume, counts),
    ]
    for make in makers:
        whole = make()
        outputs = run(whole, docs)
        for at, output in enumerate(outputs):
            stored = type(output.resume).from_dict(json.loads(json.dumps(output.resume.to_dict())))
            assert stored == output.resume
            again = make(stored, output.counts)
            assert again.replay_from == output.resume.replay_from
            rest = [o for index, rows in enumerate(docs) if index >= again.replay_from for o in again.add(index, rows)]
            rest += again.finish()
            assert len(rest) == len(outputs) - at - 1
            if rest:
                assert table(rest) == table(outputs[at + 1 :])
                assert [o.resume for o in rest] == [o.resume for o in outputs[at + 1 :]]
            assert again.counts == whole.counts


def test_manifest_reports_fill_rate_and_rows_and_the_last_target_of_every_segment_is_its_own(tmp_path):
    plain, plain_out = run_prepare(tmp_path, CHAT, out_name="plain")
    manifest, out = run_prepare(tmp_path, CHAT, out_name="packed", pack=256)
    packing = manifest["packing"]
    rows = read_rows(out)
    tokens = sum(r["num_tokens"] for r in rows)
    assert manifest["layout"] == "packed" and packing["mode"] == "pack" and packing["length"] == 256
    assert packing["rows"] == len(rows) == manifest["totals"]["rows"] and packing["tokens"] == tokens
    assert (
        packing["fill_rate"] == tokens / (len(rows) * 256) and packing["padding_overhead"] == 1 - packing["fill_rate"]
    )
    assert packing["fill_rate"] > 0.97  # best-fit decreasing over 600 documents leaves little room
    assert packing["documents"] == plain["totals"]["rows"] == sum(len(r["source"]) for r in rows)
    assert packing["loss_tokens"] == plain["totals"]["loss_tokens"] == manifest["totals"]["loss_tokens"]

    documents = {(r["record_index"], r["part"]): r for r in read_rows(plain_out)}
    for row in rows:
        assert row["num_tokens"] <= 256
        for k, (a, b) in enumerate(segments(_columns([row]), 0)):
            doc = documents.pop((row["record_index"][k], row["part"][k]))
            assert row["target_ids"][b - 1] == doc["target_ids"][-1]  # the segment's last target: its own last token
            assert row["input_ids"][a] == doc["input_ids"][0]
            for column in ("input_ids", "target_ids", "loss_mask", "token_class"):
                assert row[column][a:b] == doc[column]
            assert row["source"][k] == doc["source"] and row["flags"][k] == doc["flags"]
    assert not documents  # every document was packed


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [r[name] for r in rows] for name in rows[0]}


def test_packed_output_is_byte_identical_whatever_the_batches_and_workers(tmp_path):
    first, a = run_prepare(tmp_path, CHAT, out_name="a", pack=128, pack_window=100, shard_max_rows=40)
    second, b = run_prepare(
        tmp_path, CHAT, out_name="b", pack=128, pack_window=100, shard_max_rows=40, batch_size=7, workers=2
    )
    assert len(first["shards"]) > 2 and first["shards"] == second["shards"]
    assert len(first["shards"]) == -(-first["totals"]["rows"] // 40)  # full shards of 40 rows, then the rest
    for shard in first["shards"]:
        assert (a / shard["file"]).read_bytes() == (b / shard["file"]).read_bytes()
    assert first["packing"] == second["packing"]


def test_documents_longer_than_the_rows_go_through_the_overflow_policy_first(tmp_path):
    truncated, out = run_prepare(tmp_path, [DATA / "text.jsonl"], out_name="truncate", pack=24)
    assert all(n <= 24 for n in (r["num_tokens"] for r in read_rows(out)))
    assert truncated["config"]["max_length"] == 24 and truncated["records"]["row_flags"]["truncated"] > 0
    dropped, _ = run_prepare(tmp_path, [DATA / "text.jsonl"], out_name="drop", pack=24, overflow="drop")
    assert dropped["records"]["by_reason"]["dropped"]["too_long"] == truncated["records"]["row_flags"]["truncated"]
    split, out = run_prepare(tmp_path, [DATA / "text.jsonl"], out_name="split", pack=24, overflow="split")
    plain, plain_out = run_prepare(tmp_path, [DATA / "text.jsonl"], out_name="plain")
    assert split["totals"]["loss_tokens"] == plain["totals"]["loss_tokens"]  # windows lose no target
    assert all(r["num_tokens"] <= 24 for r in read_rows(out))
    # Exactly the documents longer than the rows were truncated (each text record is one document).
    assert truncated["records"]["row_flags"]["truncated"] == sum(r["num_tokens"] > 24 for r in read_rows(plain_out))


def test_concat_end_to_end_on_text(tmp_path):
    plain, plain_out = run_prepare(tmp_path, [DATA / "text.jsonl"], out_name="plain")
    manifest, out = run_prepare(tmp_path, [DATA / "text.jsonl"], out_name="concat", concat=64)
    rows = read_rows(out)
    assert all(r["num_tokens"] == 64 for r in rows[:-1]) and rows[-1]["num_tokens"] <= 64
    stream = [(i, t) for r in read_rows(plain_out) for i, t in zip(r["input_ids"], r["target_ids"], strict=True)]
    assert [(i, t) for r in rows for i, t in zip(r["input_ids"], r["target_ids"], strict=True)] == stream
    packing = manifest["packing"]
    assert packing["mode"] == "concat" and packing["documents"] == plain["totals"]["rows"]
    assert packing["segments_cut"] > 0 and packing["rows_dropped"] == 0
    assert packing["segments_cut"] == _pieces_of_cut_documents([r["num_tokens"] for r in read_rows(plain_out)], 64)
    assert packing["fill_rate"] == plain["totals"]["tokens"] / (len(rows) * 64) > 0.98


def _pieces_of_cut_documents(lengths: list[int], n: int) -> int:
    """Segments that are a piece of a document cut across rows, when the documents are streamed into rows of n."""
    pieces, start = 0, 0
    for length in lengths:
        rows = (start + length - 1) // n - start // n + 1  # the rows this document's positions fall in
        pieces += rows if rows > 1 else 0
        start += length
    return pieces


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pack": 64, "concat": 64}, "choose one"),
        ({"pack": 64, "max_length": 128}, "longer than the packed rows"),
        ({"concat": 64, "text_append_eos": False}, "end-of-text"),
        ({"pack": 0}, "at least 1"),
        ({"pack": 8, "pack_window": -1}, "pack_window"),
    ],
)
def test_packing_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(SetupError, match=message):
        PrepareConfig.from_mapping({"inputs": ["x"], "tokenizer": "t", "out": "o", **options})


def test_the_documented_cu_seqlens_snippet_runs_and_matches_the_shards(tmp_path):
    """docs/packing.md's cu_seqlens block, run as written, then its function on real packed rows."""
    docs = (ROOT / "docs" / "packing.md").read_text(encoding="utf-8")
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", docs, re.DOTALL) if "def cu_seqlens" in block)
    scope: dict[str, Any] = {}
    exec(snippet, scope)
    _, out = run_prepare(tmp_path, CHAT, pack=128)
    for row in read_rows(out):
        documented = scope["cu_seqlens"](row["segment_ids"])
        assert documented.tolist() == cu_seqlens(np.array(row["segment_ids"])).tolist()
        starts = np.flatnonzero(np.array(row["position_ids"]) == 0).tolist()
        assert documented.tolist() == [*starts, row["num_tokens"]] and len(starts) == len(row["source"])


def test_the_command_line_packs_and_reports_the_fill_rate(tmp_path):
    args = ["prepare", *map(str, CHAT), "--tokenizer", str(FIXTURE_TOKENIZER), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--pack", "200", "--pack-window", "300"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    packing = manifest["packing"]
    assert manifest["config"]["pack"] == 200 and packing["window"] == 300
    assert f"packing:  pack 200: {packing['rows']} rows, fill rate {100 * packing['fill_rate']:.2f}%" in result.output
    refused = CliRunner().invoke(main, [*args, "--pack", "64", "--concat", "64"])
    assert refused.exit_code == 2 and "choose one" in refused.output
