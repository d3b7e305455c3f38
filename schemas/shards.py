"""The output: one row per training example, shifted for next-token prediction. Defined here once.

For tokens t[0..n) with per-token trainable flags m[0..n):

    input_ids  = t[:-1]      what the model reads (teacher forcing)
    target_ids = t[1:]       what it must predict at each position
    loss_mask  = m[1:]       1 where the target counts (its token is trainable), 0 elsewhere
    token_class = class(t[1:])  why: the `TokenClass` of each target token

so `input_ids[k+1] == target_ids[k]`, and a row of n tokens has n - 1 positions. `--max-length N` bounds the
positions of a row (len(input_ids) <= N), the convention of nanoGPT and Megatron (a row holds N + 1 tokens).
Consumers that want Hugging Face's unshifted `input_ids` + `labels` (-100 where not counted) rebuild them:

    input_ids_hf = input_ids + [target_ids[-1]]
    labels = [-100] + [t if m else -100 for t, m in zip(target_ids, loss_mask)]
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntFlag

import pyarrow as pa

SCHEMA_VERSION = 1

COLUMN_DOCS: dict[str, str] = {
    "input_ids": "token ids the model reads at each position (t[:-1])",
    "target_ids": "token ids to predict at each position (t[1:]); input_ids[k+1] == target_ids[k]",
    "loss_mask": "1 where the target counts toward the loss, else 0",
    "position_ids": "position of each input token in its document, from 0",
    "token_class": "TokenClass of each target token (see lossmask.schemas.classes)",
    "num_tokens": "number of positions in the row (len(input_ids))",
    "num_loss_tokens": "number of counted targets (sum(loss_mask)); normalize the loss with it across batches",
    "source": "where the record came from, 'file:line'",
    "record_index": "0-based index of the record in the whole input, in input order",
    "part": "0-based index of this row among the rows made from one record (several when turns are split)",
    "flags": "RowFlag bits: what happened to this row that an audit should know",
    "segment_ids": "packed rows: which document of the row each position belongs to (0, 1, ...); "
    "attention must not cross segments, and position_ids restart at 0 in each",
}

PACKED_COLUMN_DOCS: dict[str, str] = {
    "source": "packed rows: 'file:line' of each document, in segment order",
    "record_index": "packed rows: input index of each document, in segment order",
    "part": "packed rows: row-within-record of each document, in segment order (--concat: the piece of the "
    "record, 0, 1, ... when a record is cut across rows)",
    "flags": "packed rows: RowFlag bits of each document, in segment order",
}


class RowFlag(IntFlag):
    """Facts about a row, stored as bits in the `flags` column, for the audit and for filtering."""

    TRUNCATED = 1  # tokens were cut to fit --max-length
    ANSWER_TRUNCATED = 2  # the cut went through a trained span
    STRADDLE = 4  # some token holds both trained and untrained characters (it counts)
    SPECIAL_ESCAPED = 8  # control-token strings in message content were encoded as plain text
    SPECIAL_ALLOWED = 16  # control-token strings in content became control tokens (--special-tokens-in-content allow)
    UNFAITHFUL_MASKED = 32  # an assistant turn rendered unlike inference was left untrained (faithful-only)
    UNFAITHFUL_TRAINED = 64  # an assistant turn rendered unlike inference was trained anyway (as-rendered)
    GEN_PROMPT_MISMATCH = 128  # the context before an assistant turn differs from the generation prompt
    MESSAGE_DROPPED = 256  # the template left a message out (--dropped-messages keep)
    NO_END_OF_TURN = 512  # no end-of-turn marker was found after a trained assistant turn
    SPLIT_TURN = 1024  # one of several rows made from one conversation, each training one turn's context
    DOUBLE_BOS = 2048  # the row starts with two BOS tokens
    GENERATION_TAGS = 4096  # the trained spans come from the template's {% generation %} blocks
    EMPTY_ASSISTANT = 8192  # an assistant message in the row has blank content and no tool calls
    TURNS_DROPPED = 16384  # the earliest whole turns were left out to fit --max-length (turn-aware truncation)
    WINDOW = 32768  # one of several windows of a longer example (--overflow split, or a document cut by --concat)
    REASONING_CONTINUED = 65536  # a turn whose reasoning the template drops, trained after its generation prompt
    TOOL_ARGUMENTS_CONVERTED = 131072  # tool-call arguments converted to the type the template takes
    STOP_APPENDED = 262144  # the final turn ends with the stop token the model must emit (GLM's next header)


LAYOUT_ROWS = "rows"  # one document per row
LAYOUT_PACKED = "packed"  # several documents per row (--pack N)


def _field(name: str, type_: pa.DataType, doc: str | None = None) -> pa.Field:
    return pa.field(name, type_, nullable=False, metadata={"doc": doc or COLUMN_DOCS[name]})


SHARD_SCHEMA = pa.schema(
    [
        _field("input_ids", pa.list_(pa.int32())),
        _field("target_ids", pa.list_(pa.int32())),
        _field("loss_mask", pa.list_(pa.uint8())),
        _field("position_ids", pa.list_(pa.int32())),
        _field("token_class", pa.list_(pa.uint8())),
        _field("num_tokens", pa.int32()),
        _field("num_loss_tokens", pa.int32()),
        _field("source", pa.string()),
        _field("record_index", pa.int64()),
        _field("part", pa.int32()),
        _field("flags", pa.uint32()),
    ],
    metadata={"lossmask.schema_version": str(SCHEMA_VERSION), "lossmask.layout": LAYOUT_ROWS},
)

# Packed layout (`--pack N`): several whole documents per row, each shifted before packing so no target
# crosses documents. Per-position columns are as above plus `segment_ids`; per-document columns become lists,
# one entry per segment. The manifest's "layout" says which of the two a shard set uses.
PER_POSITION_COLUMNS = tuple(f.name for f in SHARD_SCHEMA if pa.types.is_list(f.type))  # the same when packed
PER_DOCUMENT_COLUMNS = ("source", "record_index", "part", "flags")  # one value per document: lists when packed


def _packed(field: pa.Field) -> pa.Field:
    """A rows-layout column as the packed layout has it: per-document values become lists, with their own doc."""
    type_ = pa.list_(field.type) if field.name in PER_DOCUMENT_COLUMNS else field.type
    return _field(field.name, type_, PACKED_COLUMN_DOCS.get(field.name))


def _packed_schema(rows: pa.Schema) -> pa.Schema:
    """`rows` with `segment_ids` after its per-position columns, and its per-document columns as lists."""
    positions = [f for f in rows if f.name in PER_POSITION_COLUMNS]
    others = [f for f in rows if f.name not in PER_POSITION_COLUMNS]
    fields = [*positions, _field("segment_ids", pa.list_(pa.int32())), *others]
    metadata = {**rows.metadata, b"lossmask.layout": LAYOUT_PACKED.encode()}
    return pa.schema([_packed(f) for f in fields], metadata=metadata)


PACKED_SHARD_SCHEMA = _packed_schema(SHARD_SCHEMA)


def record_batch(columns: Mapping[str, pa.Array], schema: pa.Schema) -> pa.RecordBatch:
    """One record batch of `schema` from its columns by name, in the schema's order; a missing or extra column
    is an error (a column that matched the wrong name by position would write a valid-looking, wrong shard)."""
    missing = [name for name in schema.names if name not in columns]
    extra = [name for name in columns if name not in schema.names]
    if missing or extra:
        raise ValueError(f"columns do not match the schema: missing {missing}, extra {extra}")
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


SHARD_SUFFIX = ".arrow"
# Metadata files start with "_" (the convention of Parquet's `_metadata`): `pyarrow.dataset.dataset(DIR)` skips
# them, so the folder reads as a dataset of shards. Polars reads `DIR/*.arrow`.
MANIFEST_NAME = "_manifest.json"
REJECTS_NAME = "_rejects.jsonl"
