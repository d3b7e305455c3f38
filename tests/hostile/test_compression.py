"""Where a zstd file stops being zstd, wherever that falls relative to the decompressor's reads of 131,075
bytes: every record before is read, then one `unreadable` with the offset; and a file cut at any byte never
passes for a shorter one."""

from __future__ import annotations

import json

import pytest
import zstandard
from lossmask.pipeline.read import iter_file

READ_SIZE = zstandard.DECOMPRESSION_RECOMMENDED_INPUT_SIZE  # what the stream reader asks its source for
GARBAGE = b"this is no zstd frame at all"


def _skippable(size: int) -> bytes:
    """A zstd skippable frame of `size` bytes in all (8 of header)."""
    return b"\x50\x2a\x4d\x18" + (size - 8).to_bytes(4, "little") + b"\0" * (size - 8)


def _records(count: int) -> bytes:
    return b"".join(json.dumps({"text": f"record {k}"}).encode() + b"\n" for k in range(count))


@pytest.mark.parametrize("shift", range(-5, 6))
def test_garbage_after_the_frames_wherever_it_meets_a_read(tmp_path, shift):
    frame = zstandard.ZstdCompressor().compress(_records(20))
    padding = READ_SIZE + shift - len(frame)
    path = tmp_path / "data.jsonl.zst"
    path.write_bytes(frame + _skippable(padding) + GARBAGE)
    assert len(frame) + padding == READ_SIZE + shift  # the garbage starts there
    records = list(iter_file(path, "f"))
    assert [r.error for r in records] == [None] * 20 + ["unreadable"]
    assert f"no zstd frame starts at compressed byte {READ_SIZE + shift}" in records[-1].detail


def test_a_file_cut_at_any_byte_is_never_a_shorter_file(tmp_path):
    whole = zstandard.ZstdCompressor(write_checksum=True).compress(_records(30))
    frames = whole + zstandard.ZstdCompressor().compress(_records(5))
    path = tmp_path / "cut.jsonl.zst"
    for cut in range(1, len(frames)):
        if cut == len(whole):
            continue  # between the two frames: a whole file of 30 records
        path.write_bytes(frames[:cut])
        records = list(iter_file(path, "f"))
        assert records and records[-1].error == "unreadable", cut
        assert all(r.error is None for r in records[:-1]), cut
