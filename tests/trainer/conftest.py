"""Fixtures for the reference trainer's tests: tiny float64 models, hand-made rows (plain, padded, packed), and
the demo shards (`make demo`'s inputs through `lossmask prepare`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from lossmask.jobs.prepare import prepare
from lossmask.pipeline.config import PrepareConfig
from lossmask.schemas.shards import MANIFEST_NAME, PACKED_SHARD_SCHEMA, SCHEMA_VERSION
from lossmask.trainer.model import ModelConfig, Params, init_params
from lossmask.trainer.shards import Example
from threadpoolctl import threadpool_limits

from ..support import DEMO_INPUTS, FIXTURES


@pytest.fixture(autouse=True, scope="session")
def one_blas_thread() -> Iterator[None]:
    """Two pytest workers on two cores: more BLAS threads only make them wait for each other."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "shards"
    config = PrepareConfig(
        inputs=[str(FIXTURES / "data" / name) for name in DEMO_INPUTS],
        tokenizer=str(FIXTURES / "tokenizer"),
        out=str(out),
    )
    prepare(config)
    return out


TINY = ModelConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, d_model=8, dtype="float64")


@pytest.fixture
def tiny() -> tuple[ModelConfig, Params]:
    """A tiny float64 model with weights big enough that every op matters (not the near-uniform init)."""
    rng = np.random.default_rng(1234)
    params = init_params(TINY, rng)
    params = {name: value + 0.3 * rng.standard_normal(value.shape) for name, value in params.items()}
    return TINY, params


def random_example(rng: np.random.Generator, length: int, vocab: int = TINY.vocab_size) -> Example:
    """One shifted document: tokens t, input t[:-1], target t[1:], some targets counted."""
    tokens = rng.integers(0, vocab, length + 1)
    mask = (rng.random(length) < 0.6).astype(np.uint8)
    mask[-1] = 1  # at least one counted target
    return Example(
        input_ids=tokens[:-1].astype(np.int64),
        target_ids=tokens[1:].astype(np.int64),
        loss_mask=mask,
        position_ids=np.arange(length, dtype=np.int64),
        segment_ids=np.zeros(length, dtype=np.int32),
    )


def pack(examples: list[Example]) -> Example:
    """Documents shifted on their own, then concatenated: positions restart, segment k for the k-th document."""
    return Example(
        input_ids=np.concatenate([e.input_ids for e in examples]),
        target_ids=np.concatenate([e.target_ids for e in examples]),
        loss_mask=np.concatenate([e.loss_mask for e in examples]),
        position_ids=np.concatenate([e.position_ids for e in examples]),
        segment_ids=np.concatenate([np.full(e.num_tokens, k, dtype=np.int32) for k, e in enumerate(examples)]),
    )


@pytest.fixture
def make_example() -> Callable[..., Example]:
    return random_example


@pytest.fixture
def pack_examples() -> Callable[[list[Example]], Example]:
    return pack


def write_packed_shards(out: Path, rows: list[Example], vocab_size: int) -> Path:
    """A shard folder in the PACKED layout (schemas.shards.PACKED_SHARD_SCHEMA) with a minimal manifest."""
    out.mkdir(parents=True, exist_ok=True)

    def per_document(row: Example, value: object) -> list[object]:
        return [value] * (int(row.segment_ids.max()) + 1)

    columns = {
        "input_ids": [r.input_ids.tolist() for r in rows],
        "target_ids": [r.target_ids.tolist() for r in rows],
        "loss_mask": [r.loss_mask.tolist() for r in rows],
        "position_ids": [r.position_ids.tolist() for r in rows],
        "token_class": [[5] * r.num_tokens for r in rows],
        "segment_ids": [r.segment_ids.tolist() for r in rows],
        "num_tokens": [r.num_tokens for r in rows],
        "num_loss_tokens": [r.num_loss_tokens for r in rows],
        "source": [[f"doc.jsonl:{i + 1}:{k}" for k in range(int(r.segment_ids.max()) + 1)] for i, r in enumerate(rows)],
        "record_index": [per_document(r, i) for i, r in enumerate(rows)],
        "part": [per_document(r, 0) for r in rows],
        "flags": [per_document(r, 0) for r in rows],
    }
    table = pa.Table.from_pydict(columns, schema=PACKED_SHARD_SCHEMA)
    with pa.OSFile(str(out / "shard-00000.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "layout": "packed",
        "tokenizer": {"vocab_size": vocab_size},
        "config": {"tokenizer": str(FIXTURES / "tokenizer")},
        "shards": [{"file": "shard-00000.arrow", "rows": len(rows)}],
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return out


@pytest.fixture
def packed_shards() -> Callable[[Path, list[Example], int], Path]:
    return write_packed_shards
