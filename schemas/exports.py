"""The layouts `lossmask export` writes for external trainers, defined once: Hugging Face rows and flat memmaps.

Shards are *shifted* (`input_ids = t[:-1]`, `target_ids = t[1:]`, `loss_mask = m[1:]`). External trainers want
the document *unshifted*, and shift themselves:

Hugging Face (`--to hf`): a causal LM computes `loss(logits[:, :-1], labels[:, 1:])`, so per document

    input_ids = t                    = shard input_ids + [shard target_ids[-1]]
    labels    = [-100] + [target if counted else -100 for each shard position]
    position_ids = 0, 1, ..., n      (restarting at every document of a packed row)

`labels[0]` is -100 because no token predicts the first one. In a packed row the first token of *every*
document is -100, since HF would otherwise score it as a prediction from the previous document (the same rule
as transformers' `DataCollatorWithFlattening`). Packed rows carry `seq_lengths` (one length per document,
TRL's column) and no `attention_mask`: an all-ones mask makes transformers treat the row as one sequence, while
`position_ids` alone let it (and TRL's padding-free collator) keep documents apart.

Memmap (`--to numpy`): lossmask's own layout, read through `header.json` (no other project reads it as it is;
the trainers' own layouts are `--to olmo-core`, `datatrove`, `mds` and `megatron-bridge`). The same unshifted
documents, concatenated into flat little-endian arrays, with `loss_mask` aligned to `tokens` (1 where the token
is a target that counts, predicted from the tokens before it in its document; 0 at every document start).
"""

from __future__ import annotations

import pyarrow as pa

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy (and every HF model) skips

HF_COLUMN_DOCS: dict[str, str] = {
    "input_ids": "unshifted token ids of the row (every document whole: shard input_ids + its last target)",
    "labels": "input_ids where the token is a counted target, else -100; unshifted (the model shifts)",
    "attention_mask": "1 for every token (rows layout only; a collator pads it with 0)",
    "position_ids": "position of each token in its document, from 0 (restarts per document in packed rows)",
    "seq_lengths": "packed rows: token count of each document, in order; sums to len(input_ids)",
    # pairs (TRL's DPOTrainer columns, trl 1.16: prompt + completion, completions wholly counted)
    "prompt_ids": "pairs: the prompt's token ids (shard prompt_length tokens), the same for both completions",
    "chosen_ids": "pairs: the chosen completion's token ids after the prompt, every one counted (answer and stop)",
    "rejected_ids": "pairs: the rejected completion's token ids after the prompt, every one counted (answer and stop)",
}


def _hf_field(name: str, value_type: pa.DataType) -> pa.Field:
    return pa.field(name, pa.list_(value_type), nullable=False, metadata={"doc": HF_COLUMN_DOCS[name]})


HF_ROWS_SCHEMA = pa.schema(
    [
        _hf_field("input_ids", pa.int32()),
        _hf_field("labels", pa.int32()),
        _hf_field("attention_mask", pa.int8()),
        _hf_field("position_ids", pa.int32()),
    ],
    metadata={"lossmask.export": "hf", "lossmask.layout": "rows"},
)

HF_PACKED_SCHEMA = pa.schema(
    [
        _hf_field("input_ids", pa.int32()),
        _hf_field("labels", pa.int32()),
        _hf_field("position_ids", pa.int32()),
        _hf_field("seq_lengths", pa.int32()),
    ],
    metadata={"lossmask.export": "hf", "lossmask.layout": "packed"},
)

# Pair shards as TRL's DPOTrainer tokenizes preference data (trl 1.16 `DPOTrainer._prepare_dataset`): the prompt,
# and each completion after it; its collator counts every completion token (completion_mask), none of the prompt.
HF_PAIRS_SCHEMA = pa.schema(
    [_hf_field("prompt_ids", pa.int32()), _hf_field("chosen_ids", pa.int32()), _hf_field("rejected_ids", pa.int32())],
    metadata={"lossmask.export": "hf", "lossmask.layout": "pairs"},
)

HF_FILE_PATTERN = "train-{index:05d}-of-{count:05d}.{suffix}"  # the Hub's split naming: `train-*` is the train split
HF_SUFFIXES = {"parquet": "parquet", "arrow": "arrow"}
EXPORT_INFO_NAME = "_export.json"  # what was exported from where; "_" so dataset readers skip it

MEMMAP_FORMAT = "lossmask.memmap"
MEMMAP_VERSION = 1
MEMMAP_HEADER_NAME = "header.json"
# name -> (file, dtype, meaning). `tokens` takes the smallest unsigned width that holds the vocabulary.
MEMMAP_ARRAYS: dict[str, tuple[str, str, str]] = {
    "tokens": ("tokens.bin", "<u2 or <u4", "unshifted token ids of every document, concatenated"),
    "loss_mask": ("loss_mask.bin", "|u1", "1 where tokens[j] is a counted target (0 at each document start)"),
    "doc_offsets": ("doc_offsets.bin", "<i8", "document k is tokens[doc_offsets[k]:doc_offsets[k+1]]; starts at 0"),
    "row_offsets": ("row_offsets.bin", "<i8", "shard row r holds documents row_offsets[r]:row_offsets[r+1]"),
    "record_index": ("record_index.bin", "<i8", "input record index of each document"),
}


def token_dtype(vocab_size: int) -> str:
    """uint16 when every id fits (vocabularies up to 65536), else uint32: half the bytes for most models."""
    return "<u2" if vocab_size <= 1 << 16 else "<u4"
