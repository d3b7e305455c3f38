"""The preference shard schemas: pair rows (DPO) and labeled rows (KTO), built by column name, every pair rule
checked, and read back through the loader's `ShardSet` like any other layout."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
from lossmask.errors import SetupError
from lossmask.loader.shards import LAYOUTS, ShardSet
from lossmask.pipeline.shift import Row, rows_to_batch
from lossmask.schemas.preference import (
    COLUMN_DOCS,
    KTO_SHARD_SCHEMA,
    LAYOUT_KTO,
    LAYOUT_PAIRS,
    PAIR_SHARD_SCHEMA,
    SCHEMA_VERSION,
    PairSide,
    kto_rows_to_batch,
    pair_rows_to_batch,
)
from lossmask.schemas.shards import MANIFEST_NAME, SHARD_SCHEMA

from .pair_shards import make_pair, write_pair_shards, write_shard_folder

PAIR_COLUMNS = [
    "chosen_input_ids",
    "chosen_target_ids",
    "chosen_loss_mask",
    "rejected_input_ids",
    "rejected_target_ids",
    "rejected_loss_mask",
    "prompt_length",
    "chosen_num_loss_tokens",
    "rejected_num_loss_tokens",
    "source",
    "record_index",
    "flags",
]


def test_pair_schema_columns_types_docs_and_metadata():
    assert PAIR_SHARD_SCHEMA.names == PAIR_COLUMNS
    for field in PAIR_SHARD_SCHEMA:
        assert not field.nullable and field.metadata[b"doc"].decode() == COLUMN_DOCS[field.name]
    types = {f.name: f.type for f in PAIR_SHARD_SCHEMA}
    assert types["chosen_input_ids"] == types["rejected_target_ids"] == pa.list_(pa.int32())
    assert types["chosen_loss_mask"] == types["rejected_loss_mask"] == pa.list_(pa.uint8())
    assert types["prompt_length"] == types["chosen_num_loss_tokens"] == pa.int32()
    assert (types["source"], types["record_index"], types["flags"]) == (pa.string(), pa.int64(), pa.uint32())
    assert PAIR_SHARD_SCHEMA.metadata == {
        b"lossmask.schema_version": str(SCHEMA_VERSION).encode(),
        b"lossmask.layout": LAYOUT_PAIRS.encode(),
    }


def test_kto_schema_is_the_sft_rows_plus_a_label():
    assert KTO_SHARD_SCHEMA.names == [*SHARD_SCHEMA.names, "label"]
    assert KTO_SHARD_SCHEMA.field("label").type == pa.bool_()
    assert KTO_SHARD_SCHEMA.metadata[b"lossmask.layout"] == LAYOUT_KTO.encode()


def test_pair_rows_keep_the_sft_shift_and_the_shared_prompt():
    row = make_pair([1, 2, 3], [7, 8, 0], [9, 0], index=4)
    batch = pair_rows_to_batch([row, make_pair([5], [6], [4, 4], index=5)])
    assert batch.schema == PAIR_SHARD_SCHEMA and batch.num_rows == 2
    first = {name: batch.column(name)[0].as_py() for name in batch.schema.names}
    # tokens chosen 1 2 3 7 8 0, rejected 1 2 3 9 0: input t[:-1], target t[1:], mask m[1:]
    assert first["chosen_input_ids"] == [1, 2, 3, 7, 8] and first["chosen_target_ids"] == [2, 3, 7, 8, 0]
    assert first["chosen_loss_mask"] == [0, 0, 1, 1, 1] and first["rejected_loss_mask"] == [0, 0, 1, 1]
    assert first["rejected_input_ids"][:3] == first["chosen_input_ids"][:3] == [1, 2, 3]
    assert first["prompt_length"] == 3 and first["chosen_target_ids"][3 - 1] == 7  # the first completion token
    assert (first["chosen_num_loss_tokens"], first["rejected_num_loss_tokens"]) == (3, 2)
    assert (first["source"], first["record_index"], first["flags"]) == ("pairs.jsonl:5", 4, 0)


def broken(kind: str):
    row = make_pair([1, 2, 3], [7, 8], [9])
    if kind == "prompt differs":
        row.rejected.input_ids[1] = 5
    elif kind == "prompt target counts":
        row.chosen.loss_mask[0] = 1
    elif kind == "nothing counts":
        row.rejected.loss_mask[:] = 0
    elif kind == "not shifted":
        row.chosen.target_ids = row.chosen.target_ids.copy()  # from_tokens gives views of one token array
        row.chosen.target_ids[0] = 9
    elif kind == "lengths":
        row.chosen = PairSide(row.chosen.input_ids, row.chosen.target_ids[:-1], row.chosen.loss_mask)
    elif kind == "prompt too long":
        row.prompt_length = 5  # the chosen side has only 4 positions
    elif kind == "no prompt":
        row.prompt_length = 0
    return row


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("prompt differs", "prompt tokens differ"),
        ("prompt target counts", "inside the prompt counts"),
        ("nothing counts", "no rejected target counts"),
        ("not shifted", "not the inputs shifted"),
        ("lengths", "differ in length"),
        ("prompt too long", "not within 1..4 positions of chosen"),
        ("no prompt", "not within 1.."),
    ],
)
def test_a_row_that_breaks_a_pair_rule_is_refused(kind, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pair_rows_to_batch([make_pair([1], [2], [3]), broken(kind)])


def sft_row(tokens: list[int], trainable: list[int], index: int) -> Row:
    """An SFT row of `pipeline.shift`, shifted from its tokens."""
    ids, mask = np.array(tokens, np.int32), np.array(trainable, np.uint8)
    return Row(ids[:-1], ids[1:], mask[1:], np.zeros(ids.size - 1, np.uint8), f"k:{index + 1}", index, 0, 0)


def test_kto_rows_are_sft_rows_with_their_label():
    rows = [sft_row([1, 2, 3], [0, 0, 1], 0), sft_row([4, 5], [0, 1], 1)]
    batch = kto_rows_to_batch(rows_to_batch(rows), [True, False])
    assert batch.schema == KTO_SHARD_SCHEMA
    assert batch.column("label").to_pylist() == [True, False]
    assert batch.column("target_ids").to_pylist() == [[2, 3], [5]]
    with pytest.raises(ValueError, match="extra"):
        kto_rows_to_batch(
            {**{n: rows_to_batch(rows).column(n) for n in SHARD_SCHEMA.names}, "x": pa.array([1, 2])}, [True, False]
        )


def test_shard_set_reads_pair_and_kto_folders(tmp_path):
    """The one change to the loader: `ShardSet` accepts the two layouts, each checked like the SFT ones."""
    assert {LAYOUT_PAIRS, LAYOUT_KTO} <= set(LAYOUTS)
    pairs = write_pair_shards(tmp_path / "pairs", [make_pair([1, 2], [3], [4], i) for i in range(5)], 16, 2)
    shards = ShardSet(pairs, verify=True)
    shards.verify()
    shards.check()
    assert (shards.layout, shards.num_rows, shards.packed, len(shards.files)) == (LAYOUT_PAIRS, 5, False, 3)
    got = [row for _, batch in shards.iter_batches(["chosen_target_ids"]) for row in batch.column(0).to_pylist()]
    assert got == [[2, 3]] * 5
    with pytest.raises(SetupError, match="no column"):
        shards.open(0, ["input_ids"])  # an SFT reader of a pair folder fails cleanly
    unlisted = ShardSet.unlisted(pairs)
    assert unlisted.layout == LAYOUT_PAIRS and unlisted.num_rows == 5

    sft_rows = rows_to_batch([sft_row([1, 2], [0, 1], 0)])
    kto = write_shard_folder(tmp_path / "kto", [kto_rows_to_batch(sft_rows, [True])], LAYOUT_KTO, 16)
    assert ShardSet(kto, verify=True).layout == LAYOUT_KTO
    ShardSet(kto).check()


def test_shard_set_refuses_a_pair_folder_of_another_version_or_with_sft_shards(tmp_path):
    pairs = write_pair_shards(tmp_path / "pairs", [make_pair([1], [2], [3])], 16)
    manifest = json.loads((pairs / MANIFEST_NAME).read_text(encoding="utf-8"))
    (pairs / MANIFEST_NAME).write_text(json.dumps({**manifest, "schema_version": 99}), encoding="utf-8")
    with pytest.raises(SetupError, match=r"schema_version 99; .* of the pairs layout"):
        ShardSet(pairs)
    # A manifest that says pairs over a shard of SFT rows: the columns of the layout are checked.
    (pairs / MANIFEST_NAME).write_text(json.dumps({**manifest, "layout": "rows"}), encoding="utf-8")
    with pytest.raises(SetupError, match="does not have the rows layout"):
        ShardSet(pairs).check()
