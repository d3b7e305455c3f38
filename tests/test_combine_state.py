"""The combiners' typed resume state (what the checkpoint stores as `replay`) and their `summary()` (the manifest's
`packing`). That a resumed combiner makes the same rest is tests/test_packing.py's and tests/test_resume.py's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lossmask.jobs.checkpoint import CHECKPOINT_NAME, Checkpoint
from lossmask.pipeline.combine import (
    Concatenator,
    ConcatenatorResume,
    Packer,
    PackerResume,
    Passthrough,
    PassthroughResume,
)
from lossmask.pipeline.shift import Row

STATES = [PassthroughResume(7), PackerResume(3, 2), ConcatenatorResume(4, 10, 1)]


@pytest.mark.parametrize("state", STATES)
def test_a_state_survives_the_checkpoint_and_says_where_to_read_from(state, tmp_path):
    Checkpoint("job", next_record=9, replay=state.to_dict()).save(tmp_path)
    loaded = Checkpoint.load(tmp_path, "job")
    assert loaded is not None and type(state).from_dict(loaded.replay) == state
    assert state.replay_from == {PassthroughResume: 7, PackerResume: 3, ConcatenatorResume: 4}[type(state)]
    assert type(state).from_dict({}) == type(state)()  # a fresh job: nothing written, read from record 0
    assert type(state)().replay_from == 0


def test_a_state_of_another_combiner_is_refused():
    with pytest.raises(TypeError):
        PackerResume.from_dict(ConcatenatorResume(4, 10, 1).to_dict())


@pytest.mark.parametrize("replay", [[1424, 49], None])
def test_a_checkpoint_without_a_typed_replay_state_is_not_resumed(replay, tmp_path):
    """Old checkpoints stored the state as a positional list; resuming one as {} would skip nothing and write
    the carried-over rows twice, so the job starts over instead."""
    data = {"digest": "job", "shards": [], "next_record": 1500, "rejects_bytes": 0, "accounting": {}, "packing": {}}
    if replay is not None:
        data["replay"] = replay
    (tmp_path / CHECKPOINT_NAME).write_text(json.dumps(data))
    assert Checkpoint.load(tmp_path, "job") is None


def _document(index: int, n: int, counted: int) -> Row:
    ids = np.arange(n + 1, dtype=np.int32)
    mask = np.array([1] * counted + [0] * (n - counted), dtype=np.uint8)
    return Row(ids[:-1], ids[1:], mask, np.zeros(n, np.uint8), f"f:{index}", index, 0, 0)


def test_summaries_report_the_fill_rate_of_rows_of_n_positions():
    assert Passthrough().summary() is None
    packer = Packer(8, window=5)
    for index, n in enumerate([5, 3, 6]):
        packer.add(index, [_document(index, n, 2)])
    packer.finish()
    summary = packer.summary()
    assert summary == {
        "mode": "pack",
        "length": 8,
        "window": 5,
        "documents": 3,
        "rows": 2,
        "tokens": 14,
        "loss_tokens": 6,
        "fill_rate": 14 / 16,
        "padding_overhead": 1 - 14 / 16,
    }
    concat = Concatenator(8)
    assert concat.summary()["fill_rate"] == 0.0 and concat.summary()["padding_overhead"] == 0.0  # no rows yet
    for index, n in enumerate([5, 3, 6]):
        concat.add(index, [_document(index, n, 2)])
    concat.finish()
    summary = concat.summary()
    assert summary["mode"] == "concat" and "window" not in summary
    assert (summary["rows"], summary["tokens"], summary["segments_cut"]) == (2, 14, 0)
    assert summary["fill_rate"] == 14 / 16
