"""The output of preference data: pair rows (DPO) and labeled rows (KTO). Defined here once, next to the SFT
schema of `schemas.shards`, whose shift convention both keep.

A pair row holds one prompt answered twice. Each side is its own token sequence t[0..n) (prompt, then that
side's completion) with its per-token trainable flags m, shifted exactly like an SFT row:

    chosen_input_ids  = tc[:-1]   chosen_target_ids  = tc[1:]   chosen_loss_mask  = mc[1:]
    rejected_input_ids = tr[:-1]  rejected_target_ids = tr[1:]  rejected_loss_mask = mr[1:]

`prompt_length` P is the number of prompt tokens, the same P tokens at the start of both sides: tc[:P] ==
tr[:P]. So both sides read the same `input_ids[:P]`, their first P - 1 targets are prompt tokens and never count
(`loss_mask[:P-1] == 0`), and the first completion token is `target_ids[P - 1]`. A trainer can score a side as
the sum of log p over its counted targets, which is what DPO's sequence log-probability is. `PairRow.check`
holds these rules, and `pair_rows_to_batch` refuses a row that breaks one.

A KTO row is an SFT row (the rows layout of `schemas.shards`) plus its `label`: True for a desirable answer.
Neither layout is packed: both objectives score each sequence on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .shards import COLUMN_DOCS as SFT_COLUMN_DOCS
from .shards import SHARD_SCHEMA, record_batch

SCHEMA_VERSION = 1  # of the two layouts below; the SFT layouts have their own in `schemas.shards`

LAYOUT_PAIRS = "pairs"  # one preference pair per row (DPO)
LAYOUT_KTO = "kto"  # one judged answer per row (KTO): the SFT rows layout plus `label`

SIDES = ("chosen", "rejected")

COLUMN_DOCS: dict[str, str] = {
    "chosen_input_ids": "token ids the model reads on the chosen side (tc[:-1]); the first prompt_length are the "
    "prompt, the same on both sides",
    "chosen_target_ids": "token ids to predict on the chosen side (tc[1:]); chosen_input_ids[k+1] == "
    "chosen_target_ids[k]",
    "chosen_loss_mask": "1 where a chosen target counts toward its sequence log-probability (completion tokens "
    "only), else 0",
    "rejected_input_ids": "token ids the model reads on the rejected side (tr[:-1]); the first prompt_length are "
    "the prompt, the same on both sides",
    "rejected_target_ids": "token ids to predict on the rejected side (tr[1:]); rejected_input_ids[k+1] == "
    "rejected_target_ids[k]",
    "rejected_loss_mask": "1 where a rejected target counts toward its sequence log-probability (completion "
    "tokens only), else 0",
    "prompt_length": "tokens of the prompt, identical at the start of both sides; targets before position "
    "prompt_length - 1 are prompt tokens and never count",
    "chosen_num_loss_tokens": "counted targets on the chosen side (sum(chosen_loss_mask))",
    "rejected_num_loss_tokens": "counted targets on the rejected side (sum(rejected_loss_mask))",
    "source": SFT_COLUMN_DOCS["source"],
    "record_index": SFT_COLUMN_DOCS["record_index"],
    "flags": "RowFlag bits (lossmask.schemas.shards.RowFlag) of either side: what an audit should know",
    "label": "KTO: True when the answer is desirable, False when it is not",
}


def _field(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False, metadata={"doc": COLUMN_DOCS[name]})


def _metadata(layout: str) -> dict[str, str]:
    return {"lossmask.schema_version": str(SCHEMA_VERSION), "lossmask.layout": layout}


PAIR_SHARD_SCHEMA = pa.schema(
    [
        *(
            _field(f"{side}_{name}", pa.list_(type_))
            for side in SIDES
            for name, type_ in (("input_ids", pa.int32()), ("target_ids", pa.int32()), ("loss_mask", pa.uint8()))
        ),
        *(_field(name, pa.int32()) for name in ("prompt_length", "chosen_num_loss_tokens", "rejected_num_loss_tokens")),
        SHARD_SCHEMA.field("source"),  # as in SFT rows
        SHARD_SCHEMA.field("record_index"),
        _field("flags", pa.uint32()),
    ],
    metadata=_metadata(LAYOUT_PAIRS),
)

KTO_SHARD_SCHEMA = pa.schema([*SHARD_SCHEMA, _field("label", pa.bool_())], metadata=_metadata(LAYOUT_KTO))


@dataclass(slots=True)
class PairSide:
    """One side of a pair, shifted: what the model reads, what it predicts, and which predictions count."""

    input_ids: np.ndarray
    target_ids: np.ndarray
    loss_mask: np.ndarray

    @classmethod
    def from_tokens(cls, tokens: Sequence[int] | np.ndarray, trainable: Sequence[bool] | np.ndarray) -> PairSide:
        """The shift of `schemas.shards`: input t[:-1], target t[1:], mask m[1:]."""
        ids = np.asarray(tokens, dtype=np.int32)
        mask = np.asarray(trainable, dtype=np.uint8)
        return cls(ids[:-1], ids[1:], mask[1:])

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


@dataclass(slots=True)
class PairRow:
    chosen: PairSide
    rejected: PairSide
    prompt_length: int
    source: str
    record_index: int
    flags: int = 0

    def check(self) -> None:
        """The rules of the module docstring; ValueError naming the first one broken (and the row's source)."""
        prompt = self.prompt_length
        for name, side in zip(SIDES, (self.chosen, self.rejected), strict=True):
            n = side.input_ids.size
            if side.target_ids.size != n or side.loss_mask.size != n:
                raise ValueError(f"{self.source}: {name} input_ids, target_ids and loss_mask differ in length")
            if not np.array_equal(side.input_ids[1:], side.target_ids[:-1]):
                raise ValueError(f"{self.source}: {name} targets are not the inputs shifted by one")
            if not 1 <= prompt <= n:
                raise ValueError(f"{self.source}: prompt_length {prompt} is not within 1..{n} positions of {name}")
            if side.loss_mask[: prompt - 1].any():
                raise ValueError(f"{self.source}: a {name} target inside the prompt counts")
            if not side.loss_mask.any():
                raise ValueError(f"{self.source}: no {name} target counts")
        if not np.array_equal(self.chosen.input_ids[:prompt], self.rejected.input_ids[:prompt]):
            raise ValueError(f"{self.source}: the prompt tokens differ between chosen and rejected")


def pair_rows_to_batch(rows: Sequence[PairRow]) -> pa.RecordBatch:
    """One record batch of `PAIR_SHARD_SCHEMA`, built by column name, every row checked first."""
    for row in rows:
        row.check()
    columns: dict[str, pa.Array] = {}
    for side in SIDES:
        parts = [getattr(row, side) for row in rows]
        for name, type_ in (("input_ids", pa.int32()), ("target_ids", pa.int32()), ("loss_mask", pa.uint8())):
            columns[f"{side}_{name}"] = _list_array([getattr(p, name) for p in parts], type_)
        columns[f"{side}_num_loss_tokens"] = pa.array([p.num_loss_tokens for p in parts], pa.int32())
    columns["prompt_length"] = pa.array([row.prompt_length for row in rows], pa.int32())
    columns["source"] = pa.array([row.source for row in rows], pa.string())
    columns["record_index"] = pa.array([row.record_index for row in rows], pa.int64())
    columns["flags"] = pa.array([row.flags for row in rows], pa.uint32())
    return record_batch(columns, PAIR_SHARD_SCHEMA)


def kto_rows_to_batch(rows: pa.RecordBatch | Mapping[str, pa.Array], labels: Sequence[bool]) -> pa.RecordBatch:
    """A record batch of `KTO_SHARD_SCHEMA`: the columns of SFT rows (a `SHARD_SCHEMA` batch, or its columns by
    name) and one label per row."""
    columns = {name: rows.column(name) for name in rows.schema.names} if isinstance(rows, pa.RecordBatch) else rows
    return record_batch({**columns, "label": pa.array(labels, pa.bool_())}, KTO_SHARD_SCHEMA)


def _list_array(values: Sequence[np.ndarray], type_: pa.DataType) -> pa.Array:
    """A list<type_> array from one NumPy array per row, built from flat buffers (no Python int per value)."""
    dtype = type_.to_pandas_dtype()
    arrays = [np.asarray(v, dtype=dtype) for v in values]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type_))
