"""`ShardSet`: a shard folder is checked before anything reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lossmask.errors import SetupError
from lossmask.loader import ShardLoader, ShardSet


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


def test_reading_from_a_row_on_skips_whole_shards_unopened(kit):
    docs = kit.random_documents(np.random.default_rng(53), 30)
    folder = kit.write(docs, rows_per_shard=10, batch_rows=4)
    rows = [row for _, b in ShardSet(folder).iter_batches(["input_ids"]) for row in b.column(0).to_pylist()]
    assert rows == [doc[0][:-1].tolist() for doc in docs]
    for start in (0, 3, 10, 13, 29, 30):
        read = [row for _, b in ShardSet(folder).iter_batches(["input_ids"], start) for row in b.column(0).to_pylist()]
        assert read == rows[start:], start
    (folder / "shard-00000.arrow").write_bytes(b"not arrow")  # shards 0 and 1 end before row 20: never opened
    assert [i for i, _ in ShardSet(folder).iter_batches(["input_ids"], 20)] == [2, 2, 2]
    with pytest.raises(SetupError, match="not an Arrow IPC file"):
        list(ShardSet(folder).iter_batches(["input_ids"], 5))


def test_verify_on_open_checks_each_shard_as_it_is_first_read(kit):
    folder = kit.write(kit.random_documents(np.random.default_rng(54), 30), rows_per_shard=10)
    (folder / "shard-00001.arrow").write_bytes((folder / "shard-00002.arrow").read_bytes())  # readable, 10 rows
    shards = ShardSet(folder, verify=True)  # nothing read yet
    assert sum(b.num_rows for _, b in shards.iter_batches(["input_ids"], 20)) == 10
    assert sum(b.num_rows for _, b in ShardSet(folder).iter_batches(["input_ids"])) == 30  # unverified: read
    with pytest.raises(SetupError, match=r"shard-00001\.arrow does not match the sha256"):
        list(shards.iter_batches(["input_ids"]))
    with pytest.raises(SetupError, match="does not match the sha256"):
        ShardSet(folder).verify()


@pytest.mark.parametrize("packed", [False, True])
def test_a_folder_without_manifest_is_read_from_its_shard_files(kit, packed):
    docs = kit.random_documents(np.random.default_rng(55), 12)
    folder = kit.write(docs, rows_per_shard=5, packed=packed, pack_sizes=(2,))
    expected = ShardSet(folder)
    (folder / "_manifest.json").unlink()
    shards = ShardSet.unlisted(folder)
    assert shards.layout == expected.layout == ("packed" if packed else "rows")
    assert [(f.path, f.rows, f.sha256) for f in shards.files] == [(f.path, f.rows, None) for f in expected.files]
    assert [b.to_pylist() for _, b in shards.iter_batches()] == [b.to_pylist() for _, b in expected.iter_batches()]
