"""`make bench-scale`: the local engine against the Ray engine on one machine, and what the Ray driver costs.

The corpus of `bench/prepare.py` (real-derived conversations, SmolLM2) at each `--conversations` size, prepared
with `--workers 2` (local) and with `--engine ray` (a Ray instance on this machine, one task per core), the same
`--unit-bytes` for both (the output is the same bytes: checked). Runs are interleaved over `--rounds` rounds
(local, ray, local, ray...). For each: wall seconds, tokens/s, CPU-seconds of the whole process tree (the
driver, Ray's own processes and its workers, sampled from /proc every 10 ms) and tokens per CPU-second, the tree's
peak RSS, and the driver process alone: its peak RSS and the bytes it read (`rchar` of /proc/PID/io: every
read() it made, files, pipes and sockets; and with `--drop-caches`, `read_bytes`: what it fetched from disk),
sampled while its children live (a reaped child's I/O is added to its parent's). The load average at each
round's start. Numbers to read, never assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare import ROOT, TOKENIZER, build_corpus, rss_kb, sample_tree


def driver_io(pid: int, field: str = "rchar") -> int:
    """`rchar` (every read() the process made: files, pipes and sockets; Ray's driver talks to its cluster over
    sockets the whole run, so this grows with time too) or `read_bytes` (what it made the kernel fetch from disk:
    file data only, when the page cache was dropped before the run)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def drop_page_cache() -> bool:
    """Drop the page cache (root only), so that `read_bytes` counts the driver's file reads from disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(command: list[str]) -> dict[str, float]:
    import subprocess

    hz = os.sysconf("SC_CLK_TCK")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    last_ticks: dict[int, int] = {}
    peak = driver_peak = rchar = disk = 0
    while process.poll() is None:
        tree = sample_tree(process.pid, last_ticks)
        peak = max(peak, sum(rss_kb(pid) for pid in tree))
        driver_peak = max(driver_peak, rss_kb(process.pid))
        if len(tree) > 1:  # before its children (workers, Ray's processes) are reaped: their I/O joins its own then
            rchar = max(rchar, driver_io(process.pid))
            disk = max(disk, driver_io(process.pid, "read_bytes"))
        time.sleep(0.01)
    if process.returncode:
        raise SystemExit(f"failed: {' '.join(command)}")
    return {
        "wall": time.perf_counter() - started,
        "cpu": sum(last_ticks.values()) / hz,
        "rss": peak,
        "driver_rss": driver_peak,
        "driver_read": rchar,
        "driver_disk": disk,
    }


def command(corpus: Path, out: Path, engine: str, unit_bytes: int, pack: list[str] | None = None) -> list[str]:
    return [
        sys.executable, "-m", "lossmask.cli", "prepare", str(corpus), "--tokenizer", str(TOKENIZER),
        "--out", str(out), "--fresh", "-q", "--workers", "2", "--engine", engine, "--unit-bytes", str(unit_bytes),
        *(pack or []),
    ]  # fmt: skip


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(out.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, nargs="+", default=[20_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unit-bytes", type=int, default=4 << 20)
    parser.add_argument("--corpus", type=Path, nargs="*", help="use these corpora (one per size) instead")
    parser.add_argument("--drop-caches", action="store_true", help="cold page cache before each run (root)")
    parser.add_argument("--pack", type=int, help="prepare with --pack N (on Ray: the planned pack)")
    parser.add_argument("--pack-window", type=int, default=0, help="with --pack: its window (default 0: all)")
    args = parser.parse_args()
    pack = ["--pack", str(args.pack), "--pack-window", str(args.pack_window)] if args.pack else []
    work = Path(tempfile.mkdtemp(prefix="lossmask-bench-scale-"))
    for k, size in enumerate(args.conversations):
        corpus = args.corpus[k] if args.corpus else work / f"corpus-{size}.jsonl"
        if not args.corpus:
            build_corpus(corpus, size)
        with open(corpus, "rb") as handle:
            lines = sum(1 for _ in handle)
        print(f"\n{lines:,} conversations ({corpus.stat().st_size / 1e6:.1f} MB), --unit-bytes {args.unit_bytes:,}")
        results: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
        loads, digests = [], {}
        for round_ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for engine in results:
                out = work / f"out-{engine}-{size}"
                cold = args.drop_caches and drop_page_cache()
                results[engine].append(measure(command(corpus, out, engine, args.unit_bytes, pack)))
                digests[engine] = digest(out)
            print(f"  round {round_ + 1} done (load {loads[-1]:.2f})", file=sys.stderr)
        manifest = json.loads((work / f"out-local-{size}" / "_manifest.json").read_text())
        tokens = manifest["totals"]["tokens"] + manifest["totals"]["rows"]
        units = len({s["file"].split("-")[1] for s in manifest["shards"]})
        made = f"{len(manifest['shards'])} packed shards ({' '.join(pack)})" if pack else f"{units} units"
        print(f"  {tokens:,} tokens, {made}; same bytes on both engines: {digests['local'] == digests['ray']}")
        print(f"  load average at the rounds' starts: {', '.join(f'{x:.2f}' for x in loads)}")
        print(
            "  | engine | wall s (min-max) | tokens/s | CPU-s | tokens/CPU-s | peak RSS (tree) | driver peak RSS |"
            " driver rchar | driver disk reads |"
        )
        print("  |---|---|---|---|---|---|---|---|---|")
        for engine, runs in results.items():
            wall = [r["wall"] for r in runs]
            cpu = statistics.median(r["cpu"] for r in runs)
            median = statistics.median(wall)
            print(
                f"  | {engine} | {median:.1f} ({min(wall):.1f}-{max(wall):.1f}) | {tokens / median:,.0f} | {cpu:.1f} |"
                f" {tokens / cpu:,.0f} | {statistics.median(r['rss'] for r in runs) / 1024:.0f} MB |"
                f" {statistics.median(r['driver_rss'] for r in runs) / 1024:.0f} MB |"
                f" {statistics.median(r['driver_read'] for r in runs) / 1e6:.1f} MB |"
                f" {statistics.median(r['driver_disk'] for r in runs) / 1e6:.1f} MB{'' if cold else ' (warm cache)'} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
