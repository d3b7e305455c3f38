"""What an export records about itself where the trainer's format has no place for it: `_export.json`.

Datatrove's folders and MosaicML's `index.json` hold tokens, boundaries and masks but nothing of where they came
from. The sidecar says which shard folder (and which manifest, by sha256) an export was written from, what was
counted, and the sha256 of every file written, so a training run can name its data exactly. Its name starts with
"_" and ends in ".json": none of the consumers' readers globs for it (`*.ds`, `index.json`, `*.parquet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import file_sha256, write_json
from ..loader.shards import ShardSet
from ..schemas.exports import EXPORT_INFO_NAME
from ..schemas.shards import MANIFEST_NAME


def source_info(shards: ShardSet) -> dict[str, Any]:
    """The shard folder an export comes from, and its manifest's sha256 (which fixes every shard's sha256)."""
    return {"shards": str(shards.directory), "manifest_sha256": file_sha256(shards.directory / MANIFEST_NAME)}


def file_entries(out: Path, names: list[str]) -> list[dict[str, Any]]:
    """Name, size and sha256 of each written file, in the order given."""
    return [{"file": name, "bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)} for name in names]


def write_export_info(out: Path, export_format: str, shards: ShardSet, files: list[str], **facts: Any) -> dict:
    """Write `out/_export.json` for an export of `shards` in `export_format`; returns what it holds."""
    info = {
        "format": export_format,
        "layout": shards.layout,
        "source": source_info(shards),
        **facts,
        "files": file_entries(out, files),
    }
    write_json(out / EXPORT_INFO_NAME, info)
    return info
