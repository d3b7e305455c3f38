"""Preference shard folders written straight from tokens, as a renderer would write them: what the schema, loader
and trainer tests read (no rendering needed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
from lossmask.schemas.preference import LAYOUT_PAIRS, SCHEMA_VERSION, PairRow, PairSide, pair_rows_to_batch
from lossmask.schemas.shards import MANIFEST_NAME
from lossmask.trainer.shards import Example, iter_examples, open_shards


def make_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], index: int = 0, source: str | None = None
) -> PairRow:
    """A pair row: the prompt's tokens never train, every completion token does (the answer and its stop)."""

    def side(completion: list[int]) -> PairSide:
        return PairSide.from_tokens(prompt + completion, [0] * len(prompt) + [1] * len(completion))

    return PairRow(side(chosen), side(rejected), len(prompt), source or f"pairs.jsonl:{index + 1}", index)


def write_shard_folder(
    out: Path, batches: list[pa.RecordBatch], layout: str, vocab_size: int, version: int = SCHEMA_VERSION
) -> Path:
    """One shard per record batch, and a manifest with its layout, vocabulary and each shard's rows and sha256."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, batch in enumerate(batches):
        name = f"shard-{i:05d}.arrow"
        with pa.OSFile(str(out / name), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        shards.append({"file": name, "rows": batch.num_rows, "sha256": digest})
    manifest = {"schema_version": version, "layout": layout, "tokenizer": {"vocab_size": vocab_size}, "shards": shards}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return out


def write_pair_shards(out: Path, rows: list[PairRow], vocab_size: int, rows_per_shard: int = 64) -> Path:
    chunks = [rows[i : i + rows_per_shard] for i in range(0, len(rows), rows_per_shard)]
    return write_shard_folder(out, [pair_rows_to_batch(chunk) for chunk in chunks], LAYOUT_PAIRS, vocab_size)


def random_pairs(rng: np.random.Generator, count: int, vocab: int, longest: int = 8) -> list[PairRow]:
    """Pairs of random tokens: a prompt of 1-4 tokens, two different completions of 1-`longest` tokens."""
    rows = []
    for index in range(count):
        prompt = rng.integers(0, vocab, int(rng.integers(1, 5))).tolist()
        chosen = rng.integers(0, vocab, int(rng.integers(1, longest + 1))).tolist()
        rejected = rng.integers(0, vocab, int(rng.integers(1, longest + 1))).tolist()
        if rejected == chosen:
            rejected = [*chosen, (chosen[-1] + 1) % vocab]
        rows.append(make_pair(prompt, chosen, rejected, index))
    return rows


def prompt_and_answer(row: Example) -> tuple[list[int], list[int]] | None:
    """An SFT row's tokens before its first counted token and its counted tokens, when those form one run (a
    single answer and its stop, as in one-turn rows); None for rows that train several separate spans."""
    counted = np.flatnonzero(row.loss_mask)
    if counted.size == 0 or counted[-1] - counted[0] + 1 != counted.size:
        return None
    tokens = [*row.input_ids.tolist(), int(row.target_ids[-1])]  # t = input_ids + the last target
    start, end = int(counted[0]) + 1, int(counted[-1]) + 2  # target k is token k + 1
    return tokens[:start], tokens[start:end]


def pairs_from_rows(rows: Iterable[Example]) -> list[PairRow]:
    """Pairs made from SFT rows: each prompt with its own answer (chosen) and the next row's answer (rejected)."""
    parts = [part for part in map(prompt_and_answer, rows) if part is not None]
    pairs = []
    for i, (prompt, answer) in enumerate(parts):
        other = next((a for _, a in parts[i + 1 :] + parts[:i] if a != answer), None)
        if other is not None:
            pairs.append(make_pair(prompt, answer, other, len(pairs)))
    return pairs


def write_fixture_pairs(sft_shards: str | Path, out: str | Path) -> Path:
    """The pairs of `pairs_from_rows` over an SFT shard folder (the demo's), written as a pairs folder; from the
    repository root: python -c "import sys; sys.path.insert(0, '.'); from tests.pair_shards import
    write_fixture_pairs; write_fixture_pairs('out/demo/shards', 'out/demo/pairs')" """
    shards = open_shards(sft_shards)
    pairs = pairs_from_rows(iter_examples(shards))
    return write_pair_shards(Path(out), pairs, shards.vocab_size or 0)
