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


LAYOUT_ROWS = "rows"  # one document per row
LAYOUT_PACKED = "packed"  # several documents per row (--pack N)


def _field(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False, metadata={"doc": COLUMN_DOCS[name]})


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


def _packed_field(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False, metadata={"doc": PACKED_COLUMN_DOCS.get(name, COLUMN_DOCS[name])})


PACKED_SHARD_SCHEMA = pa.schema(
    [
        _packed_field("input_ids", pa.list_(pa.int32())),
        _packed_field("target_ids", pa.list_(pa.int32())),
        _packed_field("loss_mask", pa.list_(pa.uint8())),
        _packed_field("position_ids", pa.list_(pa.int32())),
        _packed_field("token_class", pa.list_(pa.uint8())),
        _packed_field("segment_ids", pa.list_(pa.int32())),
        _packed_field("num_tokens", pa.int32()),
        _packed_field("num_loss_tokens", pa.int32()),
        _packed_field("source", pa.list_(pa.string())),
        _packed_field("record_index", pa.list_(pa.int64())),
        _packed_field("part", pa.list_(pa.int32())),
        _packed_field("flags", pa.list_(pa.uint32())),
    ],
    metadata={"lossmask.schema_version": str(SCHEMA_VERSION), "lossmask.layout": LAYOUT_PACKED},
)

SHARD_SUFFIX = ".arrow"
# Metadata files start with "_" (the convention of Parquet's `_metadata`): `pyarrow.dataset.dataset(DIR)` skips
# them, so the folder reads as a dataset of shards. Polars reads `DIR/*.arrow`.
MANIFEST_NAME = "_manifest.json"
REJECTS_NAME = "_rejects.jsonl"
