"""The same shards give the same bytes: every trainer export, written twice into fresh folders, is byte-identical.

A training run names its data by the sha256s the exports record; that only means something if writing the
export again gives the same files (no timestamps in gzip headers, JSON keys in a fixed order, no file names of
temporary folders in what is written).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lossmask.export import export_datatrove, export_mds, export_megatron_bridge, export_olmo_core
from lossmask.loader.shards import ShardSet

EXPORTS = {
    "olmo-core": export_olmo_core,
    "datatrove": export_datatrove,
    "mds": export_mds,
    "megatron-bridge": export_megatron_bridge,
}


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", sorted(EXPORTS))
def test_exporting_again_gives_the_same_bytes(packed_prepared_dir, tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    EXPORTS[target](ShardSet(packed_prepared_dir), "out")
    first = contents(tmp_path / "out")
    (tmp_path / "out").rename(tmp_path / "first")
    time.sleep(1.1)  # a timestamp in seconds (gzip's mtime) would differ
    EXPORTS[target](ShardSet(packed_prepared_dir), "out")
    assert contents(tmp_path / "out") == first
