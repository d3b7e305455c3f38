"""Output folders of the exports: never the shard folder itself, stale outputs of an earlier export removed
(only files the export owns, by name), every file written under a temporary name and renamed when complete; and
the one guard every document export shares, that the shards hold SFT documents at all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import SetupError
from ..files import TEMP_PREFIX, TEMP_SUFFIX, is_temporary
from ..loader.shards import ShardSet
from ..schemas.preference import LAYOUT_KTO, LAYOUT_PAIRS
from ..schemas.shards import LAYOUT_PACKED, LAYOUT_ROWS


def require_documents(shards: ShardSet, target: str) -> None:
    """Refuse shards that are not SFT documents (rows or packed), before anything is written.

    A KTO shard has the columns of an SFT row plus `label`: every document export would read it as SFT and drop
    the label, so a trainer would learn the answers judged undesirable as well as the good ones. Pair shards have
    other columns altogether. Both are refused here, once, with what to do instead."""
    if shards.layout in (LAYOUT_ROWS, LAYOUT_PACKED):
        return
    if shards.layout == LAYOUT_KTO:
        raise SetupError(
            f"{shards.directory} holds KTO rows (answers judged desirable or not); --to {target} writes SFT "
            "documents, which would train every answer and lose the judgment: no trainer export takes KTO rows yet"
        )
    if shards.layout == LAYOUT_PAIRS:
        raise SetupError(
            f"{shards.directory} holds preference pairs; --to {target} writes SFT documents: export pairs with "
            "--to hf (TRL's DPOTrainer columns)"
        )
    raise SetupError(f"{shards.directory} has layout {shards.layout!r}; --to {target} takes rows or packed shards")


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
