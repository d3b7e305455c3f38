"""The three steps of a planned `--pack` that touch data (`jobs.planned_pack`), each a plain function of one file's
location and a few arrays, run by a Ray task wherever it is placed. A location is a local path (on a filesystem
every worker mounts) or an object-store URL; files appear under their names only whole (`files.temp_path` and a
rename locally, `storage.put` on a bucket).

1. `read_sizes(rows_shard)`: a rows shard's per-document sizes (`pack_plan.Sizes`), from four of its columns.
2. `scatter(rows_shard, targets, scatter_file)`: the shard's documents regrouped by the packed shard that takes
   them (`targets`, the plan's `doc_shard` for its rows): one record batch per packed shard, in shard order,
   documents in input order within it. So each packed shard later reads, from each rows shard, one batch.
3. `gather(parts, positions, row_lengths, packed_shard)`: one packed shard, from its batches (`parts`, in rows
   shard order, which is input order): `positions[k]` is the k-th document of the shard (in its rows' segment
   order) as an index into those batches' documents, `row_lengths` how many documents each packed row has.
   Written as `write.write_shard` writes any packed shard, so its bytes are the streaming path's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import storage
from ..files import file_sha256, temp_path
from ..loader.shards import location, open_random
from ..schemas.arrays import utf8_lengths, values
from ..schemas.shards import SHARD_SCHEMA
from .pack_plan import Sizes
from .packed import PackedRow
from .shift import rows_from_batch
from .write import ShardInfo, one_batch, write_shard

SIZE_COLUMNS = ("num_tokens", "num_loss_tokens", "source", "record_index")


def read_sizes(rows_shard: str) -> Sizes:
    with open_random(location(rows_shard)) as source:
        fields = [SHARD_SCHEMA.get_field_index(name) for name in SIZE_COLUMNS]
        reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=fields))
        table = reader.read_all()
    return Sizes.of(
        values(table.column("num_tokens").combine_chunks()),
        values(table.column("num_loss_tokens").combine_chunks()),
        utf8_lengths(table.column("source").combine_chunks()),
        values(table.column("record_index").combine_chunks()),
    )


def scatter(rows_shard: str, targets: np.ndarray, scatter_file: str) -> str:
    """Write the scatter file; returns its sha256. One batch per distinct target, in increasing target order."""
    with open_random(location(rows_shard)) as source:
        table = pa.ipc.open_file(source).read_all()
    order = np.argsort(targets, kind="stable")
    table = table.take(pa.array(order)).combine_chunks()
    ordered = np.asarray(targets)[order]
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    starts = np.concatenate([[0], cuts]).tolist() if ordered.size else []
    ends = np.concatenate([cuts, [ordered.size]]).tolist() if ordered.size else []

    def write(path: Path) -> None:
        with pa.OSFile(str(path), "wb") as sink:
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            with pa.ipc.new_file(sink, table.schema, options=options) as writer:
                for start, end in zip(starts, ends, strict=True):
                    writer.write_batch(one_batch(table.slice(start, end - start)))

    return _written(scatter_file, write)


def batch_targets(targets: np.ndarray) -> np.ndarray:
    """The packed shard of each batch `scatter` writes for these targets (its batch k is for shard [k])."""
    return np.unique(np.asarray(targets))


def gather(
    parts: list[tuple[str, int]], positions: np.ndarray, row_lengths: np.ndarray, packed_shard: str
) -> ShardInfo:
    batches = []
    for file, batch in parts:
        with open_random(location(file)) as source:
            batches.append(pa.ipc.open_file(source).get_batch(batch))
    documents = [row for batch in batches for row in rows_from_batch(batch)]
    ends = np.cumsum(row_lengths).tolist()
    order = np.asarray(positions).tolist()
    rows = [PackedRow([documents[p] for p in order[a:b]]) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    if not storage.is_url(packed_shard):
        return write_shard(Path(packed_shard), rows, packed=True)  # under its temporary name, renamed when whole
    with tempfile.TemporaryDirectory(prefix="lossmask-pack-") as scratch:
        info = write_shard(Path(scratch) / packed_shard.rsplit("/", 1)[-1], rows, packed=True)
        storage.put(Path(scratch) / info.file, packed_shard)
    return info


def _written(where: str, write: Callable[[Path], None]) -> str:
    """Make the file at `where` by `write(path)`: a local file under its temporary name, renamed when whole, or a
    scratch file then uploaded (`storage.put`); returns its sha256."""
    if storage.is_url(where):
        with tempfile.TemporaryDirectory(prefix="lossmask-pack-") as scratch:
            path = Path(scratch) / where.rsplit("/", 1)[-1]
            write(path)
            storage.put(path, where)
            return file_sha256(path)
    path = Path(where)
    temp = temp_path(path)
    write(temp)
    digest = file_sha256(temp)
    temp.replace(path)
    return digest
