"""Hostile files at the read stage, through the real `prepare` CLI under a memory and a time cap (`harness`):
decompression bombs, a gigabyte message, records over --max-record-bytes in every reader, truncated archives,
a byte order mark, a FIFO, duplicate keys. Each bad record costs itself only: it is in `_rejects.jsonl` with
its place and reason, the records around it are written, and the counts add up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import zstandard

from ..support import FIXTURE_TOKENIZER
from .bombs import MIB, around_message, compress, write_bomb
from .harness import MEMORY_CAP, cap_memory, child_env, conversation, jsonl, prepare_capped, run_capped, setup_error

GOOD = jsonl(conversation("first", "one"))
LAST = jsonl(conversation("last", "three"))


def _size(detail: str) -> int:
    """The record's size that a record_too_large detail gives ("2,164,260,942 bytes; ...")."""
    return int(re.match(r"([\d,]+) bytes", detail).group(1).replace(",", ""))


def test_the_memory_cap_bites():
    """The cap is real: holding one bomb's record whole (here: a gigabyte) fails under it."""
    done = subprocess.run(
        [sys.executable, "-c", f"b'a' * {MEMORY_CAP}"],
        env=child_env(),
        capture_output=True,
        text=True,
        preexec_fn=lambda: cap_memory(MEMORY_CAP),
    )
    assert done.returncode != 0 and "MemoryError" in done.stderr


BOMB = 2048 + 16  # MiB: past 2 GiB


@pytest.mark.parametrize(
    ("name", "mebibytes"),
    [
        ("bomb.jsonl.zst", BOMB),
        ("bomb.json.zst", BOMB),
        ("message.jsonl.gz", 1024),  # one 1 GiB message, inflated at the speed of gzip
        pytest.param("bomb.jsonl.gz", BOMB, marks=pytest.mark.slow),
        pytest.param("bomb.json.gz", BOMB, marks=pytest.mark.slow),
    ],
)
def test_a_bomb_costs_one_record(tmp_path, name, mebibytes):
    """One message of a gigabyte or more inside a JSON string, between two good records: rejected while it
    streams by (record_too_large, its full inflated size counted), in bounded memory; the others are written."""
    before, after = around_message()
    path = tmp_path / name
    if ".jsonl" in name:
        inflated = write_bomb(path, GOOD + before, mebibytes, after + b"\n" + LAST)
        bomb_at, last_at = f"{path}:2", f"{path}:3"
    else:
        good, last = GOOD.strip(), LAST.strip()
        inflated = write_bomb(path, b"[" + good + b",\n" + before, mebibytes, after + b",\n" + last + b"]\n")
        bomb_at, last_at = f"{path}:2[1]", f"{path}:3[2]"
    assert inflated >= MEMORY_CAP * mebibytes // 1024
    assert path.stat().st_size < 10 * MIB
    run = prepare_capped(tmp_path, [path])
    assert (run.counts["read"], run.counts["written"], run.counts["rejected"]) == (3, 2, 1)
    reject = run.reject_at(bomb_at)
    assert reject["reason"] == "record_too_large"
    assert _size(reject["detail"]) == len(before) + mebibytes * MIB + len(after)  # the whole message, counted
    assert last_at not in run.rejected()


def test_a_gigabyte_of_blank_lines_is_skipped_and_counted(tmp_path):
    """1.1 GiB of newlines between two records (more than the cap, were it held): the second record is written,
    and has the line number the file gives it."""
    path = tmp_path / "blank.jsonl.zst"
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    newlines = b"\n" * MIB
    with open(path, "wb") as file:
        file.write(compressor.compress(GOOD))
        for _ in range(1100):
            file.write(compressor.compress(newlines))
        file.write(compressor.compress(LAST) + compressor.flush())
    run = prepare_capped(tmp_path, [path])
    assert (run.counts["read"], run.counts["written"]) == (2, 2)
    sources = [
        row["source"] for row in ds.dataset(str(run.out), format="arrow").to_table(columns=["source"]).to_pylist()
    ]
    assert sources == [f"{path}:1", f"{path}:{1100 * MIB + 2}"]


def test_audit_samples_a_bomb_in_bounded_memory(tmp_path):
    """`audit` on raw inputs reads them as prepare does: the bomb is a record-not-written, not a crash."""
    before, after = around_message()
    path = tmp_path / "bomb.jsonl.zst"
    write_bomb(path, GOOD + before, BOMB, after + b"\n" + LAST)
    run = run_capped(["audit", str(path), "--tokenizer", str(FIXTURE_TOKENIZER), "--json"])
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["records"]["by_reason"]["rejected"] == {"record_too_large": 1}
    assert summary["records"]["written"] == 2
    assert "records-not-written" in summary["fired"]


def test_a_message_under_the_record_limit_is_refused_before_tokenizing(tmp_path):
    """A 48 MiB message passes the default record limit; tokenizing it would take ~7 GB (far over the cap), so it
    must be refused by max_message_chars first, with its length."""
    before, after = around_message()
    path = tmp_path / "long.jsonl.zst"
    write_bomb(path, GOOD + before, 48, after + b"\n" + LAST)
    run = prepare_capped(tmp_path, [path])
    assert (run.counts["read"], run.counts["written"]) == (3, 2)
    reject = run.reject_at(f"{path}:2")
    assert reject["reason"] == "message_too_long"
    assert f"{48 * MIB:,} characters" in reject["detail"]


LIMIT = 4096


def _line_of(size: int, tag: str) -> bytes:
    """A JSONL line (no newline) of exactly `size` bytes."""
    line = json.dumps(conversation(tag, "x")).encode()
    pad = size - len(line)
    return json.dumps(conversation(tag + "." * pad, "x")).encode()


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz", "data.jsonl.zst", "data.json", "data.json.zst"])
def test_a_record_over_max_record_bytes_is_skipped_in_every_json_reader(tmp_path, name):
    """Records of LIMIT + 1 and 10 x LIMIT bytes are rejected with their size; one of exactly LIMIT is not."""
    exact, over, far = _line_of(LIMIT, "exact"), _line_of(LIMIT + 1, "over"), _line_of(10 * LIMIT, "far")
    assert (len(exact), len(over), len(far)) == (LIMIT, LIMIT + 1, 10 * LIMIT)
    if ".jsonl" in name:
        data = b"\n".join([exact, over, far, GOOD.strip()]) + b"\n"
        places = [":1", ":2", ":3", ":4"]
    else:  # one item per line; an item's bytes run to its comma
        data = b"[" + b",\n".join([exact, over, far, GOOD.strip()]) + b"]"
        places = [":1[0]", ":2[1]", ":3[2]", ":4[3]"]
    path = compress(tmp_path / name, data)
    run = prepare_capped(tmp_path, [path], "--max-record-bytes", str(LIMIT))
    assert (run.counts["read"], run.counts["written"], run.counts["rejected"]) == (4, 2, 2)
    for place, size in ((places[1], LIMIT + 1), (places[2], 10 * LIMIT)):
        reject = run.reject_at(f"{path}{place}")
        assert reject["reason"] == "record_too_large"
        assert _size(reject["detail"]) == size
        assert f"max_record_bytes is {LIMIT:,}" in reject["detail"]


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_a_table_cell_over_max_record_bytes_is_skipped(tmp_path, suffix):
    records = [conversation("first"), conversation("x" * (1 << 20)), conversation("last")]
    table = pa.Table.from_pylist(records)
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path)
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    run = prepare_capped(tmp_path, [path], "--max-record-bytes", str(64 << 10))
    assert (run.counts["read"], run.counts["written"]) == (3, 2)
    reject = run.reject_at(f"{path}:2")
    assert reject["reason"] == "record_too_large"
    assert _size(reject["detail"]) > 1 << 20


def _records(count: int) -> bytes:
    return jsonl(*(conversation(f"question {k} " + "lorem ipsum " * 20, f"answer {k}") for k in range(count)))


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("small.jsonl.zst", 3),  # one block: nothing decompresses before the cut
        ("large.jsonl.zst", 2000),  # several blocks: the records before the cut are written
        ("small.jsonl.gz", 3),
        ("large.jsonl.gz", 2000),
        ("large.json.zst", 2000),
    ],
)
def test_a_truncated_archive_is_unreadable_where_it_broke(tmp_path, name, count):
    """Cut in half: the records decompressed before the cut are written, the one it cut is `unreadable` with the
    compressed offset, and nothing after it is guessed at (no invalid_json for half a line)."""
    whole = _records(count)
    if ".json." in name:
        whole = b"[" + b",\n".join(whole.splitlines()) + b"]"
    full = compress(tmp_path / f"full-{name}", whole).read_bytes()
    path = tmp_path / name
    path.write_bytes(full[: len(full) // 2])
    run = prepare_capped(tmp_path, [path])
    counts = run.counts
    assert counts["rejected"] == 1, run.rejects
    (reject,) = run.rejects
    assert reject["reason"] == "unreadable"
    assert re.search(r"compressed byte \d+", reject["detail"]), reject["detail"]
    line = counts["read"]  # the records before the cut, then the one it cut
    assert reject["source"] == f"{path}:{line}" + (f"[{line - 1}]" if ".json." in name else "")
    if count > 3:
        assert counts["written"] > count // 4
    assert counts["written"] < count


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json", "bom.jsonl.gz", "bom.jsonl.zst"])
def test_a_byte_order_mark_is_accepted(tmp_path, name):
    records = [conversation("first"), conversation("second")]
    data = jsonl(*records) if ".jsonl" in name else json.dumps(records).encode()
    path = compress(tmp_path / name, b"\xef\xbb\xbf" + data)
    run = prepare_capped(tmp_path, [path])
    assert (run.counts["read"], run.counts["written"]) == (2, 2), run.rejects


def test_files_joined_with_their_byte_order_marks_are_accepted(tmp_path):
    part = b"\xef\xbb\xbf" + jsonl(conversation("a"))
    path = tmp_path / "joined.jsonl"
    path.write_bytes(part + part + part)
    run = prepare_capped(tmp_path, [path])
    assert (run.counts["read"], run.counts["written"]) == (3, 3), run.rejects


def test_a_fifo_is_named_as_such_and_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    started = time.monotonic()
    run = run_capped(["prepare", str(fifo), "--out", str(tmp_path / "out"), "--tokenizer", "unused"], timeout=30)
    line = setup_error(run)
    assert "FIFO" in line and str(fifo) in line
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("data", "key", "place"),
    [
        (b'{"messages": [], "messages": [{"role": "user", "content": "a"}]}\n', "messages", ":2"),
        (b'{"messages": [{"role": "user", "role": "assistant", "content": "a"}]}\n', "role", ":2"),
    ],
)
def test_duplicate_keys_are_rejected_not_guessed(tmp_path, data, key, place):
    path = tmp_path / "dup.jsonl"
    path.write_bytes(GOOD + data + LAST)
    run = prepare_capped(tmp_path, [path])
    assert (run.counts["read"], run.counts["written"]) == (3, 2)
    reject = run.reject_at(f"{path}{place}")
    assert reject["reason"] == "duplicate_key"
    assert repr(key) in reject["detail"]


def test_rejects_from_a_one_line_json_array_say_which_item(tmp_path):
    good = [json.dumps(conversation(k)) for k in "ab"]
    text = f'[{good[0]}, {{"messages": [], "messages": 1}}, {good[1]}, "not an object"]'
    path = tmp_path / "one-line.json"
    path.write_text(text)
    run = prepare_capped(tmp_path, [path])
    assert run.rejected() == {f"{path}:1[1]": "duplicate_key", f"{path}:1[3]": "not_an_object"}


@pytest.mark.parametrize("name", ["garbage.jsonl.zst", "garbage.jsonl.gz", "garbage.json.zst"])
def test_bytes_after_the_archive_are_unreadable_after_its_records(tmp_path, name):
    """Bytes after the last frame that are no frame (zstd) or member (gzip): every record before them is written,
    then one `unreadable` with the offset."""
    whole = _records(50)
    if ".json." in name:
        whole = b"[" + b",\n".join(whole.splitlines()) + b"]"
    path = tmp_path / name
    path.write_bytes(compress(tmp_path / f"full-{name}", whole).read_bytes() + b"this is not compressed data" * 10)
    run = prepare_capped(tmp_path, [path])
    assert run.counts["written"] == 50
    (reject,) = run.rejects
    assert reject["reason"] == "unreadable"
    assert re.search(r"compressed byte \d+", reject["detail"]), reject["detail"]


def test_a_truncated_parquet_file_is_unreadable_not_a_crash(tmp_path):
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.Table.from_pylist([conversation(f"q{k}") for k in range(100)]), whole)
    path = tmp_path / "cut.parquet"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    run = prepare_capped(tmp_path, [path])
    (reject,) = run.rejects
    assert (reject["source"], reject["reason"]) == (f"{path}:1", "unreadable")
