"""A planned `--pack` (`pipeline/pack_plan.py`, `pipeline/pack_shards.py`): the plan made from sizes alone is the
streaming path's packing and shard cuts, and the scatter/gather steps write the streaming path's bytes.

Ray's part (the tasks, resume, the bucket) is in tests/test_units_ray.py and tests/test_object_storage.py; these
run the same functions in this process.
"""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.pipeline import pack_plan
from lossmask.pipeline.combine import Packer
from lossmask.pipeline.pack_plan import Sizes, plan_packing, windows
from lossmask.pipeline.pack_shards import batch_targets, gather, read_sizes, scatter
from lossmask.pipeline.shift import Row
from lossmask.pipeline.write import ShardWriter, shard_name

from .support import run_prepare, write_distinct_conversations


def test_the_worked_example_in_the_docstring_holds() -> None:
    assert doctest.testmod(pack_plan).failed == 0


def _row(record: int, part: int, tokens: int, source: str) -> Row:
    ids = np.arange(tokens + 1, dtype=np.int32)
    mask = (ids[1:] % 3 == 0).astype(np.uint8)
    return Row(ids[:-1], ids[1:], mask, mask.copy(), source, record, part, 0)


documents = st.lists(
    st.lists(st.tuples(st.integers(1, 40), st.text(max_size=6)), min_size=0, max_size=3),  # a record's rows
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    records=documents,
    window=st.integers(0, 12),
    max_rows=st.integers(1, 6),
    max_bytes=st.integers(200, 3000),
)
def test_the_plan_is_what_the_packer_and_shard_writer_make(tmp_path_factory, records, window, max_rows, max_bytes):
    """Against the real `Packer` feeding a real `ShardWriter`: the same rows (documents in the same segment order)
    and the same shards, from sizes alone."""
    length = 40
    rows = [[_row(r, p, n, f"s{r}{text}") for p, (n, text) in enumerate(record)] for r, record in enumerate(records)]
    packer = Packer(length, window)
    writer = ShardWriter(tmp_path_factory.mktemp("shards"), max_rows=max_rows, max_bytes=max_bytes, packed=True)
    packed = []
    for index, record_rows in enumerate(rows):
        for output in packer.add(index, record_rows):
            packed.extend(output.rows)
            writer.add_record(output.rows)
    for output in packer.finish():
        packed.extend(output.rows)
        writer.add_record(output.rows)
    writer.close()
    flat = [row for record in rows for row in record]
    number = {(row.record_index, row.part): k for k, row in enumerate(flat)}
    sizes = Sizes.of(
        [r.num_tokens for r in flat],
        [r.num_loss_tokens for r in flat],
        [len(r.source.encode()) for r in flat],
        [r.record_index for r in flat],
    )
    plan = plan_packing(sizes, length, window, max_rows, max_bytes)
    expected = [[number[(d.record_index, d.part)] for d in row.documents] for row in packed]
    assert [plan.row(r).tolist() for r in range(plan.num_rows)] == expected
    assert np.diff(plan.shard_rows).tolist() == [s.rows for s in writer.shards]
    assert plan.summary(length, window) == packer.summary()


def test_a_window_ends_after_the_record_that_fills_it() -> None:
    # records of 2, 1, 3 and 1 documents; a window of 3 documents closes after the second record, the next one
    # (4 documents from there) after the third
    record_index = np.array([0, 0, 1, 2, 2, 2, 3])
    assert windows(record_index, 3) == [(0, 3), (3, 6), (6, 7)]
    assert windows(record_index, 0) == [(0, 7)]
    assert windows(np.array([], dtype=np.int64), 3) == []


def test_a_document_longer_than_a_row_is_refused() -> None:
    with pytest.raises(ValueError, match="document 1: 9 positions do not fit --pack 8"):
        plan_packing(Sizes.of([3, 9], [1, 1], [1, 1], [0, 1]), 8, 0, 10, 1 << 20)


@pytest.mark.parametrize("window", [0, 150])
def test_scatter_and_gather_write_the_local_engines_packed_shards(tmp_path, window) -> None:
    """The rows a unit job writes (several shards), through sizes, plan, scatter and gather in this process: the
    same packed shards, byte for byte, as `prepare --pack` on the record stream."""
    data = write_distinct_conversations(tmp_path / "in.jsonl", 2, "{broken\n", lambda i: i == 50)
    options = {"shard_max_rows": 30, "pack_window": window}
    packed, packed_out = run_prepare(tmp_path, [data], pack=256, out_name="packed", **options)
    rows, rows_out = run_prepare(tmp_path, [data], max_length=256, unit_bytes=40_000, out_name="rows", **options)
    files = [str(rows_out / s["file"]) for s in rows["shards"]]
    assert len(files) > 3  # the documents come from several rows shards
    plan = plan_packing(
        Sizes.join([read_sizes(f) for f in files]), 256, window, 30, packed["config"]["shard_max_bytes"]
    )
    bounds = np.cumsum([0] + [s["rows"] for s in rows["shards"]])
    parts: list[list[tuple[str, int]]] = [[] for _ in range(plan.num_shards)]
    for i, file in enumerate(files):
        targets = plan.doc_shard[bounds[i] : bounds[i + 1]]
        scatter(file, targets, f"{file}.scatter")
        for batch, shard in enumerate(batch_targets(targets).tolist()):
            parts[shard].append((f"{file}.scatter", batch))
    if window == 0:
        assert max(len(p) for p in parts) > 1  # a packed shard takes documents from several rows shards
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    infos = []
    for shard in range(plan.num_shards):
        docs = plan.shard_documents(shard)
        positions = np.searchsorted(np.sort(docs), docs)
        infos.append(gather(parts[shard], positions, plan.shard_row_lengths(shard), str(gathered / shard_name(shard))))
    assert [i.to_dict() for i in infos] == packed["shards"]
    for info in infos:
        assert (gathered / info.file).read_bytes() == (packed_out / info.file).read_bytes()
    assert plan.summary(256, window) == json.loads((packed_out / "_manifest.json").read_text())["packing"]


def test_scatter_files_are_owned_only_in_a_planned_packs_rows_folder(tmp_path) -> None:
    """`pack-<shard>` beside a rows manifest is a planned pack's scatter file only in `OUT/_pack/`; anywhere else
    a file of that name is the user's, never lossmask's to replace or delete."""
    from lossmask.jobs.outdir import Inventory

    data = write_distinct_conversations(tmp_path / "in.jsonl", 1, "{broken\n", lambda i: False)
    for folder in ("plain", "job/_pack"):
        manifest, out = run_prepare(tmp_path, [data], out_name=folder)
        scatter_name = "pack-" + manifest["shards"][0]["file"]
        (out / scatter_name).write_bytes(b"scatter")
        inventory = Inventory.of(out)
        assert (scatter_name in inventory.owned) == (folder == "job/_pack")
        assert (scatter_name in inventory.unknown) == (folder == "plain")
