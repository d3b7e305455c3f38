"""Reading shards and making batches: every row as written, packed rows with their segments, cutting and padding
as documented, a deterministic shuffle, and memory that does not grow with the dataset."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from lossmask.errors import SetupError
from lossmask.pipeline.shift import Row
from lossmask.pipeline.write import ShardWriter
from lossmask.schemas.shards import MANIFEST_NAME, SCHEMA_VERSION
from lossmask.trainer.batches import StreamStats, collate, first_rows, fitted, shuffled, training_batches
from lossmask.trainer.shards import iter_examples, open_shards, vocab_size_of


def test_rows_come_out_as_written(demo_shards: Path) -> None:
    shards = open_shards(demo_shards)
    table = ds.dataset(demo_shards, format="arrow").to_table()
    examples = list(iter_examples(shards))
    assert len(examples) == table.num_rows == shards.num_rows
    for i in (0, 1, 17, table.num_rows - 1):
        example = examples[i]
        assert example.index == i
        assert example.source == table["source"][i].as_py()
        for name in ("input_ids", "target_ids", "loss_mask", "position_ids"):
            np.testing.assert_array_equal(getattr(example, name), table[name][i].as_py())
        assert not example.segment_ids.any()
    assert [e.index for e in iter_examples(shards, start=300)] == list(range(300, table.num_rows))


def test_packed_rows_keep_their_segments(tmp_path: Path, make_example, pack_examples, packed_shards) -> None:
    rng = np.random.default_rng(0)
    rows = [pack_examples([make_example(rng, 3), make_example(rng, 4)]), make_example(rng, 5)]
    shards = open_shards(packed_shards(tmp_path / "packed", rows, 13))
    examples = list(iter_examples(shards))
    assert [e.segment_ids.tolist() for e in examples] == [[0, 0, 0, 1, 1, 1, 1], [0] * 5]
    assert examples[0].position_ids.tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert examples[0].source == "doc.jsonl:1:0, doc.jsonl:1:1"
    np.testing.assert_array_equal(examples[0].target_ids, rows[0].target_ids)


def test_long_rows_are_cut_and_rows_left_without_targets_are_skipped(make_example) -> None:
    rng = np.random.default_rng(1)
    long = make_example(rng, 10)
    prompt_only_start = make_example(rng, 8)
    prompt_only_start.loss_mask[:] = 0
    prompt_only_start.loss_mask[6:] = 1  # counted targets only beyond the cut
    short = make_example(rng, 3)
    stats = StreamStats()
    kept = list(fitted([long, prompt_only_start, short], seq_len=5, vocab_size=13, stats=stats))
    assert [e.num_tokens for e in kept] == [5, 3]
    np.testing.assert_array_equal(kept[0].input_ids, long.input_ids[:5])
    assert stats.rows == 3 and stats.rows_cut == 2 and stats.rows_skipped == 1 and stats.complete
    assert stats.targets_cut == long.loss_mask[5:].sum() + 2
    assert stats.targets == kept[0].num_loss_tokens + short.num_loss_tokens


def test_ids_outside_the_vocabulary_are_refused(make_example) -> None:
    example = make_example(np.random.default_rng(2), 4)
    example.target_ids[2] = 13
    with pytest.raises(SetupError, match="vocabulary"):
        list(fitted([example], seq_len=8, vocab_size=13, stats=None))


def test_collate_pads_with_uncounted_segment_minus_one(make_example) -> None:
    rng = np.random.default_rng(3)
    batch = collate([make_example(rng, 2), make_example(rng, 5)])
    assert batch.input_ids.shape == (2, 5)
    assert batch.segment_ids[0].tolist() == [0, 0, -1, -1, -1]
    assert batch.loss_mask[0, 2:].sum() == 0
    assert batch.num_tokens == 7


def test_shuffle_is_a_seeded_permutation(make_example) -> None:
    rng = np.random.default_rng(4)
    items = [make_example(rng, 2) for _ in range(50)]
    for i, item in enumerate(items):
        item.index = i

    def order(seed: int, buffer: int) -> list[int]:
        return [e.index for e in shuffled(items, buffer, np.random.default_rng(seed))]

    assert sorted(order(0, 8)) == list(range(50))
    assert order(0, 8) == order(0, 8)
    assert order(0, 8) != order(1, 8)
    assert order(0, 8) != list(range(50))
    assert order(0, 0) == list(range(50))


def test_each_epoch_yields_every_usable_row_once(demo_shards: Path) -> None:
    shards = open_shards(demo_shards)
    batches = training_batches(shards, batch_size=16, seq_len=64, rng=np.random.default_rng(0), shuffle_buffer=64)
    rows, targets = 0, 0
    epoch, batch = next(batches)
    while epoch == 0:
        rows, targets = rows + batch.input_ids.shape[0], targets + batch.num_loss_tokens
        epoch, batch = next(batches)
    usable = list(fitted(iter_examples(shards), 64, vocab_size_of(shards), None))
    assert epoch == 1
    assert rows == len(usable)
    assert targets == sum(e.num_loss_tokens for e in usable)
    assert len(first_rows(shards, 10, 64)) == 10


def test_a_folder_without_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=r"_manifest\.json"):
        open_shards(tmp_path)


def write_synthetic_shards(out: Path, rows: int, length: int = 64) -> Path:
    """`rows` rows of `length` positions in shards of 2048 rows (record batches of 1024), with a manifest."""
    rng = np.random.default_rng(rows)
    out.mkdir(parents=True)
    writer = ShardWriter(out, max_rows=2048)
    for start in range(0, rows, 512):
        chunk = []
        for i in range(start, min(start + 512, rows)):
            tokens = rng.integers(0, 1000, length + 1).astype(np.int32)
            chunk.append(
                Row(
                    input_ids=tokens[:-1],
                    target_ids=tokens[1:],
                    loss_mask=np.ones(length, np.uint8),
                    token_class=np.full(length, 5, np.uint8),
                    source=f"synthetic.jsonl:{i + 1}",
                    record_index=i,
                    part=0,
                    flags=0,
                )
            )
        for row in chunk:
            writer.add_record([row])
    writer.close()
    shards = writer.shards
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "tokenizer": {"vocab_size": 1000},
        "shards": [s.to_dict() for s in shards],
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return out


def peak_memory_of_one_epoch(root: Path) -> int:
    """Peak of (Python/NumPy heap + Arrow's pool) while streaming one epoch of batches."""
    shards = open_shards(root)
    batches = training_batches(shards, batch_size=8, seq_len=128, rng=np.random.default_rng(0), shuffle_buffer=256)
    arrow_before, arrow_peak = pa.total_allocated_bytes(), 0
    tracemalloc.start()
    try:
        epoch, _ = next(batches)
        while epoch == 0:
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_before)
            epoch, _ = next(batches)
        heap_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return heap_peak + arrow_peak


def test_streaming_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    small = write_synthetic_shards(tmp_path / "small", rows=2048)
    large = write_synthetic_shards(tmp_path / "large", rows=4 * 2048)
    small_peak, large_peak = peak_memory_of_one_epoch(small), peak_memory_of_one_epoch(large)
    large_bytes = 4 * 2048 * 64 * 8 * 3  # what holding the large dataset's ids and positions (int64) would take
    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)
    assert large_peak < large_bytes / 4, (large_peak, large_bytes)
