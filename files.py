"""Files lossmask writes: each under a temporary, hidden name first, and renamed only when complete, so a reader (or a
resumed run) never mistakes a half-written file for output; and the sha256 the manifests record.

Every package may import this module (it imports nothing of lossmask's at import time).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
TEMP_PREFIX = "."  # hidden while incomplete: dataset readers skip it, and it is never taken for a finished file


def temp_path(path: Path) -> Path:
    return path.with_name(TEMP_PREFIX + path.name + TEMP_SUFFIX)


def is_temporary(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def file_sha256(path: Path | Any) -> str:
    """The sha256 of a file's bytes, read in fixed-size chunks. Not through a memory map: its pages count in the
    process's RSS, so hashing a 200 MB input raised the job's peak RSS by ~90 MB, growing with the input. An
    object (`storage.RemoteFile`: a manifest read from a bucket, whose sha256 an export records) is streamed."""
    from .storage import RemoteFile, sha256

    if isinstance(path, RemoteFile):
        return sha256(path)
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def finish(temp: Path, path: Path) -> None:
    """Flush `temp` to disk and give it its final name."""
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """`data` as sorted, indented JSON, written whole or not at all."""
    temp = temp_path(path)
    temp.write_bytes(json_bytes(data))
    finish(temp, path)


def json_bytes(data: dict[str, Any]) -> bytes:
    """How lossmask writes a JSON file (manifests, summaries): sorted, indented, UTF-8."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
