"""Export speed and peak memory: `lossmask export --to T` on 1M short documents, for every target.

Corpus: N short chat conversations (1,000,000 by default), one user question and one assistant answer of a few
generated words each (lengths drawn from a fixed seed), written as OpenAI `messages` JSONL and run through
`lossmask prepare` with the fixture tokenizer (fixtures/tokenizer, ChatML, 1,024 ids) and the default options:
one document per shard row, 100,000 rows per shard. The shards are made once per N and kept in the work folder
(`--work`, default a folder under the system temp dir), so a second run only exports; the prepare time of the run
that made them is printed.

Then each target as its own process, `python -m lossmask.cli export SHARDS --to T OUT -q` exactly as a user runs
it (start-up, the sha256 check of every shard, the export, and the sidecar), interleaved over `--rounds` rounds
(A B C ... A B C ...) so that a machine that slows down mid-run slows every target alike; OUT is removed between
runs (not timed). For each target, the median and min-max over rounds of: wall seconds, documents per second,
CPU-seconds of the process (user + system, from `wait4`, so every thread and any reaped child counts) and its
peak RSS (`ru_maxrss`, what GNU time reports), plus the bytes written; and the 1-minute load average when each
run started. Numbers to read, never assertions.

    .venv/bin/python bench/export.py [--documents 1000000] [--rounds 3] [--targets hf,numpy,...] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "fixtures" / "tokenizer"
TARGETS = ["hf", "numpy", "olmo-core", "datatrove", "mds", "megatron-bridge"]
WORDS = [
    "data",
    "token",
    "mask",
    "shard",
    "loss",
    "model",
    "train",
    "batch",
    "answer",
    "question",
    "pack",
    "write",
    "read",
    "check",
    "merge",
    "split",
    "range",
    "index",
    "offset",
    "vocab",
    "layout",
    "stream",
    "file",
    "trainer",
    "reader",
    "sample",
    "turn",
    "chat",
    "prompt",
    "label",
    "window",
    "size",
    "count",
]


def write_corpus(path: Path, documents: int, seed: int = 0) -> None:
    """`documents` conversations of 3-10 question words and 5-30 answer words, as OpenAI JSONL."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for i in range(documents):
            question = " ".join(rng.choices(WORDS, k=rng.randint(3, 10)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(5, 30)))
            messages = [{"role": "user", "content": f"{i}: {question}?"}, {"role": "assistant", "content": answer}]
            out.write(json.dumps({"messages": messages}) + "\n")


def run(command: list[str], cwd: Path = ROOT) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (KB) of one process, from `wait4`."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"exit {process.returncode}: {' '.join(command)}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_kb": usage.ru_maxrss}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def lossmask(*args: str) -> list[str]:
    return [sys.executable, "-m", "lossmask.cli", *args]


def make_shards(work: Path, documents: int) -> Path:
    """The shard folder for `documents` conversations, prepared once and kept."""
    shards = work / f"shards-{documents}"
    if (shards / "_manifest.json").is_file():
        return shards
    corpus = work / f"corpus-{documents}.jsonl"
    started = time.perf_counter()
    write_corpus(corpus, documents)
    print(f"corpus: {documents:,} conversations, {corpus.stat().st_size / 1e6:.0f} MB in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)  # fmt: skip
    result = run(lossmask("prepare", str(corpus), "--tokenizer", str(TOKENIZER), "--out", str(shards), "-q"))
    # Only the wall time: prepare's workers are forkserver children that wait4 of the parent does not count.
    print(f"prepare: {result['wall']:.1f} s wall", file=sys.stderr)
    corpus.unlink()
    return shards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, from: " + ", ".join(TARGETS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lossmask-bench-export")
    args = parser.parse_args()
    targets = args.targets.split(",")
    if unknown := sorted(set(targets) - set(TARGETS)):
        parser.error(f"unknown targets: {', '.join(unknown)}")
    args.work.mkdir(parents=True, exist_ok=True)
    shards = make_shards(args.work, args.documents)
    manifest = json.loads((shards / "_manifest.json").read_text())
    totals = manifest["totals"]
    documents, positions = totals["rows"], totals["tokens"]
    shard_bytes = sum(s["bytes"] for s in manifest["shards"])
    print(f"shards: {documents:,} documents in {len(manifest['shards'])} shards, {positions + documents:,} tokens "
          f"({positions:,} positions), {shard_bytes / 1e6:.0f} MB; {os.cpu_count()} cores\n")  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    written: dict[str, int] = {}
    for round_ in range(args.rounds):
        for target in targets:
            out = args.work / f"out-{target}"
            shutil.rmtree(out, ignore_errors=True)
            load = os.getloadavg()[0]
            result = run(lossmask("export", str(shards), "--to", target, str(out), "-q"))
            result["load"] = load
            results[target].append(result)
            written[target] = folder_bytes(out)
            shutil.rmtree(out)
            print(f"round {round_ + 1} {target}: {result['wall']:.1f} s, load {load:.2f}", file=sys.stderr)

    def spread(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    loads = [r["load"] for runs in results.values() for r in runs]
    print(f"{args.rounds} interleaved rounds; 1-minute load average at the runs' starts {min(loads):.2f}-"
          f"{max(loads):.2f} (median {statistics.median(loads):.2f})\n")  # fmt: skip
    print("| target | wall s | documents/s | CPU-s | peak RSS MB | written MB |")
    print("|---|---|---|---|---|---|")
    for target, runs in results.items():
        walls = [r["wall"] for r in runs]
        rates = [documents / r["wall"] for r in runs]
        cpus = [r["cpu"] for r in runs]
        rss = [r["rss_kb"] / 1024 for r in runs]
        print(f"| `--to {target}` | {spread(walls, '.1f')} | {spread(rates, ',.0f')} | {spread(cpus, '.1f')} | "
              f"{spread(rss, ',.0f')} | {written[target] / 1e6:,.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
