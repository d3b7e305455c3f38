"""Packing benchmark: 1M documents with a real length mix, packed into rows of N positions.

The length mix is real: every conversation and instruction file of ../shared/realworld/data prepared by lossmask
itself with the SmolLM2 tokenizer and its own chat template (positions per row, as `--pack` counts them), then
repeated in input order up to 1M documents, each cut to N as `--max-length N` would. For N = 2048 and 4096 it
prints, side by side:

- best-fit decreasing over the whole million (what `--pack N --pack-window 0` does),
- best-fit decreasing over windows of 100,000 documents (the default `--pack-window`),
- best-fit decreasing per 1,000 documents (what packing per small batch gives),
- next-fit (fill a row in input order, start a new one when the next document does not fit),

with the time of each, the rows it needs, and its fill rate = tokens / (rows x N); "bound" is the fewest rows
any packing could use (tokens / N rounded up). Then the pipeline's packing stage itself (`combine.Packer` and the
Arrow batches of its rows) on 100,000 documents of the same mix: time per document, and the memory a document
takes while it waits in the window. Timings are wall clock of one run on this machine, for information: nothing
here asserts on time.

    make bench-pack            # or: .venv/bin/python bench/pack.py [--documents 1000000]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from lossmask.jobs.prepare import prepare
from lossmask.pipeline.binpack import best_fit_decreasing
from lossmask.pipeline.combine import Packer
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.packed import packed_rows_to_batch
from lossmask.pipeline.shift import Row

REALWORLD = Path(__file__).resolve().parent.parent.parent / "shared" / "realworld"
DATA_FILES = [
    "torchtune/alpaca_tiny.json",
    "torchtune/chat_tiny.json",
    "llamafactory/alpaca_en_demo.json",
    "llamafactory/alpaca_zh_demo.json",
    "llamafactory/glaive_toolcall_en_demo.json",
    "llamafactory/identity.json",
    "llamafactory/kto_en_demo.json",
    "llamafactory/mllm_demo.json",
    "llamafactory/v1_sft_demo.jsonl",
    "llamafactory/reason_tool_use_demo_50.jsonl",
    "fastchat/dummy_conversation.json",
]


def real_lengths() -> np.ndarray:
    """Positions of every row lossmask writes for the kit's data with the SmolLM2 tokenizer, in input order."""
    with tempfile.TemporaryDirectory() as folder:
        config = PrepareConfig(
            inputs=[str(REALWORLD / "data" / name) for name in DATA_FILES],
            tokenizer=str(REALWORLD / "tokenizers" / "smollm2"),
            out=str(Path(folder) / "shards"),
            workers=1,
        )
        prepare(config)
        return ds.dataset(config.out, format="arrow").to_table(columns=["num_tokens"])["num_tokens"].to_numpy()


def next_fit(sizes: np.ndarray, capacity: int) -> int:
    """Rows used when each document goes into the current row if it fits, else into a new one."""
    rows, room = 0, 0
    for size in sizes.tolist():
        if size > room:
            rows, room = rows + 1, capacity
        room -= size
    return rows


def best_fit_in_windows(window: int) -> Callable[[np.ndarray, int], int]:
    def pack(sizes: np.ndarray, capacity: int) -> int:
        return sum(len(best_fit_decreasing(sizes[s : s + window], capacity)) for s in range(0, sizes.size, window))

    return pack


def stage(sizes: np.ndarray, capacity: int) -> str:
    """The pipeline's packing stage on `sizes` documents: Packer.add, packing the window, Arrow batches."""
    rng = np.random.default_rng(0)
    documents = []
    for index, n in enumerate(sizes.tolist()):
        tokens = rng.integers(0, 49152, n + 1, dtype=np.int32)
        mask, classes = np.ones(n, np.uint8), np.full(n, 5, np.uint8)
        documents.append(Row(tokens[:-1], tokens[1:], mask, classes, f"data/chat.jsonl:{index + 1}", index, 0, 0))
    packer = Packer(capacity, window=0)
    start = time.perf_counter()
    for index, document in enumerate(documents):
        packer.add(index, [document])
    added = time.perf_counter()
    rows = [row for output in packer.finish() for row in output.rows]
    packed = time.perf_counter()
    for first in range(0, len(rows), 1024):
        packed_rows_to_batch(rows[first : first + 1024])
    done = time.perf_counter()
    tracemalloc.start()
    window = Packer(capacity, window=0)
    for index, document in enumerate(documents):
        window.add(index, [document])
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_doc = 1e6 / sizes.size
    return (
        f"packing stage, {sizes.size:,} documents at N = {capacity}: {per_doc * (done - start):.1f} us per document "
        f"(add to window {per_doc * (added - start):.1f}, pack {per_doc * (packed - added):.1f}, "
        f"Arrow batches {per_doc * (done - packed):.1f}); a waiting document holds {held / sizes.size:,.0f} bytes "
        f"({sizes.mean():.0f} positions on average)"
    )


def leftover(sizes: np.ndarray, capacity: int) -> str:
    """Where best-fit decreasing's waste is: rows with room left, against the shortest document."""
    room = np.array([capacity - int(sizes[items].sum()) for items in best_fit_decreasing(sizes, capacity)])
    left = room[room > 0]
    return (
        f"best-fit decreasing at N = {capacity}: {left.size:,} rows have room left, {left.mean():.0f} positions on "
        f"average, at most {left.max()}; the shortest document has {sizes.min()} positions"
    )


def row(capacity: int, name: str, seconds: str, rows: int, fill: float) -> str:
    return f"| {capacity:>5} | {name:<38} | {seconds:>7} | {rows:>8} | {fill:>9.4%} | {1 - fill:>8.4%} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1_000_000)
    args = parser.parse_args()
    if not (REALWORLD / "tokenizers" / "smollm2").is_dir():
        print(f"skipped: the real-world kit is not at {REALWORLD} (the SmolLM2 tokenizer and data live there)")
        return 0

    started = time.perf_counter()
    mix = real_lengths()
    print(
        f"length mix: {mix.size} rows from {len(DATA_FILES)} files of {REALWORLD / 'data'} (SmolLM2 tokenizer), "
        f"prepared in {time.perf_counter() - started:.1f} s; positions: median {int(np.median(mix))}, "
        f"mean {mix.mean():.0f}, p99 {int(np.percentile(mix, 99))}, max {int(mix.max())}"
    )
    repeated = np.resize(mix, args.documents)  # the mix over and over, in input order
    methods: list[tuple[str, Callable[[np.ndarray, int], int]]] = [
        ("best-fit decreasing, whole dataset", lambda s, n: len(best_fit_decreasing(s, n))),
        ("best-fit decreasing, windows of 100k", best_fit_in_windows(100_000)),
        ("best-fit decreasing, per 1000 docs", best_fit_in_windows(1_000)),
        ("next-fit", next_fit),
    ]
    header = f"| {'N':>5} | {'method':<38} | {'time s':>7} | {'rows':>8} | {'fill rate':>9} | {'padding':>8} |"
    print(f"\n{args.documents:,} documents\n")
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for capacity in (2048, 4096):
        sizes = np.minimum(repeated, capacity)
        tokens = int(sizes.sum())
        bound = math.ceil(tokens / capacity)
        print(row(capacity, "bound: tokens / N", "", bound, tokens / (bound * capacity)))
        for name, method in methods:
            start = time.perf_counter()
            rows = method(sizes, capacity)
            elapsed = time.perf_counter() - start
            print(row(capacity, name, f"{elapsed:.2f}", rows, tokens / (rows * capacity)))
    print()
    print(leftover(np.minimum(repeated, 2048), 2048))
    print(stage(np.minimum(repeated[:100_000], 2048), 2048))
    return 0


if __name__ == "__main__":
    sys.exit(main())
