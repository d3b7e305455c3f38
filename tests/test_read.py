"""Readers: every supported container, real line numbers, and bad bytes that become rejects, not crashes."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from lossmask.errors import SetupError
from lossmask.pipeline.read import expand_inputs, iter_inputs

LESSON = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}


def records(path):
    return list(iter_inputs([path]))


def test_jsonl_line_numbers_skip_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n" + json.dumps(LESSON) + "\n\n" + json.dumps(LESSON) + "\n")
    assert [(r.source.line, r.source.index) for r in records(path)] == [(2, 0), (4, 1)]


def test_json_array_items_get_the_line_they_start_on(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("[\n  " + json.dumps(LESSON) + ",\n\n  " + json.dumps(LESSON, indent=1) + "\n]\n")
    got = records(path)
    assert [r.source.line for r in got] == [2, 4] and all(r.value == LESSON for r in got)


def test_broken_json_array_rejects_the_rest_with_a_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("[" + json.dumps(LESSON) + ",\n{oops}\n]")
    got = records(path)
    assert got[0].value == LESSON and got[1].error == "invalid_json" and got[1].source.line == 2


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl(tmp_path, suffix):
    data = (json.dumps(LESSON) + "\n") * 3
    path = tmp_path / f"a{suffix}"
    blob = (
        gzip.compress(data.encode()) if suffix.endswith(".gz") else zstandard.ZstdCompressor().compress(data.encode())
    )
    path.write_bytes(blob)
    assert [r.value for r in records(path)] == [LESSON] * 3


def test_truncated_gzip_reads_what_it_can_and_rejects_the_rest(tmp_path):
    data = "".join(json.dumps({"text": f"document {i} " * 50}) + "\n" for i in range(200))
    path = tmp_path / "a.jsonl.gz"
    blob = gzip.compress(data.encode())
    path.write_bytes(blob[: len(blob) // 2])
    got = records(path)
    assert got[-1].error == "unreadable" and all(r.error is None for r in got[:-1]) and len(got) > 1


def test_invalid_utf8_and_invalid_json_lines_are_rejects(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(json.dumps(LESSON).encode() + b"\n\xff\xfe bad bytes\n{not json}\n" + json.dumps(LESSON).encode())
    got = records(path)
    assert [r.error for r in got] == [None, "invalid_utf8", "invalid_json", None]
    assert [r.source.line for r in got] == [1, 2, 3, 4]


def test_parquet_and_arrow_rows(tmp_path):
    table = pa.Table.from_pylist([{"text": "one"}, {"text": "two"}])
    pq.write_table(table, tmp_path / "a.parquet")
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pa.OSFile(str(tmp_path / "b.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)  # Hugging Face datasets caches are IPC streams
    for name in ("a.parquet", "a.arrow", "b.arrow"):
        got = records(tmp_path / name)
        assert [(r.value, r.source.line) for r in got] == [({"text": "one"}, 1), ({"text": "two"}, 2)]


def test_empty_file_has_no_records(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert records(path) == []


def test_inputs_expand_in_a_stable_order_and_missing_ones_are_setup_errors(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text("")
    assert [p.name for p in expand_inputs([str(tmp_path / "*.jsonl")])] == ["a.jsonl", "b.jsonl"]
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(SetupError, match="does not exist"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(SetupError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.parquet")])
    with pytest.raises(SetupError, match="unknown file type"):
        expand_inputs([str(tmp_path / "c.txt")])
