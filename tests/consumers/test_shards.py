"""`ShardSet`: a shard folder is checked before anything reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lossmask.loader import ShardLoader, ShardSet
from lossmask.pipeline.errors import SetupError


def edit_manifest(folder, change) -> None:
    path = folder / "_manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def folder(kit):
    return kit.write(kit.random_documents(np.random.default_rng(51), 30), rows_per_shard=10)


def test_shards_are_read_in_manifest_order(kit):
    docs = kit.random_documents(np.random.default_rng(52), 30)
    folder = kit.write(docs, rows_per_shard=10)
    edit_manifest(folder, lambda m: m["shards"].reverse())
    first = [batch.column("input_ids")[0].as_py() for _, batch in ShardSet(folder).iter_batches(["input_ids"])]
    assert first[0] == docs[20][0][:-1].tolist()  # the manifest's first shard, not the directory's


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(schema_version=99), "schema_version 99"),
        (lambda m: m.update(layout="zigzag"), "unknown layout"),
        (lambda m: m.update(layout="packed"), "does not have the packed layout"),
        (lambda m: m["shards"][1].update(file="shard-00042.arrow"), "shard-00042.arrow is listed"),
        (lambda m: m["shards"][0].update(rows=11), "has 10 rows but _manifest.json says 11"),
    ],
)
def test_inconsistent_folders_are_refused(folder, change, message):
    edit_manifest(folder, change)
    with pytest.raises(SetupError, match=message):
        ShardLoader(folder, batch_size=2)


def test_a_folder_without_manifest_or_with_a_broken_one(folder, tmp_path):
    with pytest.raises(SetupError, match=r"has no _manifest\.json"):
        ShardSet(tmp_path)
    (folder / "_manifest.json").write_text("{")
    with pytest.raises(SetupError, match="not valid JSON"):
        ShardSet(folder)


def test_an_empty_folder_loads_and_yields_nothing(kit):
    loader = ShardLoader(kit.write([]), batch_size=3)
    assert loader.num_rows == 0 and len(loader) == 0 and list(loader) == []
    assert loader.epoch == 1
