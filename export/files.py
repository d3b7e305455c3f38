"""Output folders of the exports: never the shard folder itself, stale outputs of an earlier export removed
(only files the export owns, by name), every file written under a temporary name and renamed when complete."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..pipeline.errors import SetupError
from ..pipeline.write import TEMP_PREFIX, TEMP_SUFFIX, temp_path


def prepare_out(out: Path, shards_dir: Path, owned: Callable[[str], bool]) -> None:
    """Create `out`, or clear the files an earlier export left there (`owned(name)`); keep anything else."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"output {out} exists and is not a folder")
    if out.resolve() == shards_dir.resolve():
        raise SetupError(f"output {out} is the shard folder itself: export to another folder")
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        name = path.name
        if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            name = name[len(TEMP_PREFIX) : -len(TEMP_SUFFIX)]
        if path.is_file() and owned(name):
            path.unlink()


def finish(temp: Path, path: Path) -> None:
    """Flush `temp` to disk and give it its final name."""
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    temp = temp_path(path)
    temp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    finish(temp, path)
