"""Output folders of the exports: never the shard folder itself, stale outputs of an earlier export removed
(only files the export owns, by name), every file written under a temporary name and renamed when complete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import SetupError
from ..files import TEMP_PREFIX, TEMP_SUFFIX, is_temporary


def prepare_out(out: Path, shards_dir: Path, owned: Callable[[str], bool]) -> None:
    """Create `out`, or clear the files an earlier export left there (`owned(name)`); keep anything else."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"output {out} exists and is not a folder")
    if out.resolve() == shards_dir.resolve():
        raise SetupError(f"output {out} is the shard folder itself: export to another folder")
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        name = path.name
        if is_temporary(name):
            name = name[len(TEMP_PREFIX) : -len(TEMP_SUFFIX)]
        if path.is_file() and owned(name):
            path.unlink()
