"""Hostile files built cheaply and streaming: decompression bombs that inflate to gigabytes from a few kilobytes,
written without ever holding or compressing their inflated size."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import zstandard

MIB = 1 << 20
FILLER = b"a" * MIB  # inside a JSON string: one endless message


def around_message() -> tuple[bytes, bytes]:
    """(before, after): a conversation whose user message is whatever is written between them."""
    record = {"messages": [{"role": "user", "content": "@"}, {"role": "assistant", "content": "x"}]}
    head, tail = json.dumps(record).split("@")
    return head.encode(), tail.encode()


def write_bomb(path: Path, before: bytes, mebibytes: int, after: bytes) -> int:
    """`before`, then `mebibytes` MiB of FILLER, then `after`, compressed by the path's suffix. zstd: one frame,
    streamed (its compressor takes ~0.1 s per GiB of repeats); gzip: a member per MiB (a gzip file may hold many,
    and each takes no time to compress, where one member of 2 GiB takes seconds). Returns the inflated size."""
    with open(path, "wb") as file:
        if path.suffix == ".zst":
            compressor = zstandard.ZstdCompressor(level=1).compressobj()
            file.write(compressor.compress(before))
            for _ in range(mebibytes):
                file.write(compressor.compress(FILLER))
            file.write(compressor.compress(after))
            file.write(compressor.flush())
        elif path.suffix == ".gz":
            file.write(gzip.compress(before, 1))
            member = gzip.compress(FILLER, 1)
            for _ in range(mebibytes):
                file.write(member)
            file.write(gzip.compress(after, 1))
        else:
            raise ValueError(path)
    return len(before) + mebibytes * MIB + len(after)


def compress(path: Path, data: bytes) -> Path:
    """`data` written to `path`, compressed by its suffix (.gz, .zst) or as it is."""
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path
