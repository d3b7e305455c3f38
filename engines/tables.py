"""`process_batch` as a plain `pa.Table -> pa.Table` function, for engines that move Arrow data (Ray Data).

In: one row per raw record (where it came from, its undecoded line or its pickled value, or why it could not be
read). Out: one row per record, with its outcome and its rows as nested lists. The driver reads the output in
order, record by record, so an engine may split or merge blocks freely without changing the result.
"""

from __future__ import annotations

import json
import pickle
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from ..pipeline.accounting import Outcome
from ..pipeline.batch import BatchResult, JobContext, process_batch
from ..pipeline.config import PrepareConfig
from ..pipeline.shift import TOKEN_COLUMNS, Row, rows_to_batch
from ..schemas.records import RawRecord, SourceRef
from ..schemas.shards import SHARD_SCHEMA

RECORD_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),
        ("index", pa.int64()),
        ("item", pa.int64()),  # a JSON array item's position (SourceRef.item)
        ("format", pa.string()),
        ("raw", pa.binary()),  # an undecoded JSONL line
        ("value", pa.binary()),  # a decoded value (Parquet, Arrow, JSON arrays), pickled
        ("error", pa.string()),
        ("detail", pa.string()),
        ("dataset", pa.int64()),  # with `datasets:`, the entry the record came from
    ]
)

# A row as its record's outcome carries it: what the outcome does not already say (source, record_index), typed as
# in the shards.
_ROW_FIELDS = (*TOKEN_COLUMNS, "part", "flags")
_ROW = pa.struct([(name, SHARD_SCHEMA.field(name).type) for name in _ROW_FIELDS])
OUTCOME_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),
        ("index", pa.int64()),
        ("item", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("field", pa.string()),
        ("rows_dropped", pa.list_(pa.string())),
        ("dataset", pa.int64()),
        ("digest", pa.binary()),  # with `dedup`
        ("rows", pa.list_(_ROW)),
    ]
)


def records_to_table(records: list[RawRecord]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in RECORD_SCHEMA.names}
    for record in records:
        columns["file"].append(record.source.file)
        columns["line"].append(record.source.line)
        columns["index"].append(record.source.index)
        columns["item"].append(record.source.item)
        columns["format"].append(record.extra.get("format"))
        columns["raw"].append(record.line)
        columns["value"].append(None if record.line is not None or record.error else pickle.dumps(record.value))
        columns["error"].append(record.error)
        columns["detail"].append(record.detail)
        columns["dataset"].append(record.extra.get("dataset"))
    return pa.table(columns, schema=RECORD_SCHEMA)


def table_to_records(table: pa.Table) -> list[RawRecord]:
    records = []
    for item in table.to_pylist():
        record = RawRecord(
            SourceRef(item["file"], item["line"], item["index"], item["item"]),
            value=None if item["value"] is None else pickle.loads(item["value"]),
            line=item["raw"],
            error=item["error"],
            detail=item["detail"] or "",
        )
        record.extra["format"] = item["format"]
        if item["dataset"] is not None:
            record.extra["dataset"] = item["dataset"]
        records.append(record)
    return records


def result_to_table(result: BatchResult) -> pa.Table:
    rows = iter(result.rows)
    columns: dict[str, list[Any]] = {name: [] for name in OUTCOME_SCHEMA.names}
    for outcome in result.outcomes:
        columns["file"].append(outcome.source.file)
        columns["line"].append(outcome.source.line)
        columns["index"].append(outcome.source.index)
        columns["item"].append(outcome.source.item)
        columns["status"].append(outcome.status)
        columns["reason"].append(outcome.reason)
        columns["detail"].append(outcome.detail)
        columns["field"].append(outcome.field)
        columns["rows_dropped"].append(list(outcome.rows_dropped))
        columns["dataset"].append(outcome.dataset)
        columns["digest"].append(outcome.digest)
        columns["rows"].append(
            [{name: getattr(r, name) for name in _ROW_FIELDS} for r in (next(rows) for _ in range(outcome.rows))]
        )
    return pa.table(columns, schema=OUTCOME_SCHEMA)


def table_to_result(table: pa.Table) -> BatchResult:
    result = BatchResult()
    rows: list[Row] = []
    rows_column = table.column("rows").combine_chunks()
    row_structs = rows_column.values
    record_offsets = rows_column.offsets.to_numpy()

    def lists(name: str) -> tuple[np.ndarray, np.ndarray]:
        array = row_structs.field(name)
        return array.offsets.to_numpy(), array.values.to_numpy(zero_copy_only=False)

    ids_off, ids = lists("input_ids")
    tgt_off, tgt = lists("target_ids")
    mask_off, mask = lists("loss_mask")
    cls_off, cls = lists("token_class")
    parts = row_structs.field("part").to_numpy(zero_copy_only=False)
    flags = row_structs.field("flags").to_numpy(zero_copy_only=False)
    for i, item in enumerate(table.drop_columns(["rows"]).to_pylist()):
        source = SourceRef(item["file"], item["line"], item["index"], item["item"])
        first, last = int(record_offsets[i]), int(record_offsets[i + 1])
        for k in range(first, last):
            rows.append(
                Row(
                    input_ids=ids[ids_off[k] : ids_off[k + 1]],
                    target_ids=tgt[tgt_off[k] : tgt_off[k + 1]],
                    loss_mask=mask[mask_off[k] : mask_off[k + 1]],
                    token_class=cls[cls_off[k] : cls_off[k + 1]],
                    source=str(source),
                    record_index=source.index,
                    part=int(parts[k]),
                    flags=int(flags[k]),
                )
            )
        outcome = Outcome(source, item["status"], last - first, item["reason"], item["detail"] or "", item["field"])
        outcome.rows_dropped = tuple(item["rows_dropped"])
        outcome.dataset, outcome.digest = item["dataset"], item["digest"]
        result.outcomes.append(outcome)
    result.batch = rows_to_batch(rows)
    return result


@lru_cache(maxsize=4)
def worker_context(config_json: str) -> JobContext:
    """One context per worker process and job: built by the first task, reused by the next ones."""
    return JobContext.from_config(PrepareConfig.from_mapping(json.loads(config_json)))


def process_table(table: pa.Table, config_json: str) -> pa.Table:
    """The whole per-record pipeline over an Arrow table of raw records (see module docstring)."""
    return result_to_table(process_batch(table_to_records(table), worker_context(config_json)))
