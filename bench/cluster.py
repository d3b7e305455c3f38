"""`make bench-cluster`: a simulated Ray cluster on this machine, 1 node then 2 nodes of one CPU each.

Ray's own multi-node test harness (`ray.cluster_utils.Cluster`) starts a head node and worker nodes as separate
raylets, each with its own object store, on this machine; the job connects through `RAY_ADDRESS` as it would to
a real cluster, and its tasks are spread over the nodes. With one CPU per node, adding a node adds a core, so the
ratio of the two wall times is how the unit job scales with nodes when the driver is not the bottleneck. CPU is
the whole machine's (from /proc/stat: the cluster's processes are not the driver's children), so run it on a quiet
machine. The output is checked to be the local engine's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare import ROOT, TOKENIZER, build_corpus
from scale import digest


def machine_cpu_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(x) for x in fields) - int(fields[3]) - int(fields[4])  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def command(corpus: Path, out: Path, engine: str, unit_bytes: int) -> list[str]:
    return [
        sys.executable, "-m", "lossmask.cli", "prepare", str(corpus), "--tokenizer", str(TOKENIZER),
        "--out", str(out), "--fresh", "-q", "--engine", engine, "--unit-bytes", str(unit_bytes),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="default: bench/prepare.py's corpus of 20k conversations")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unit-bytes", type=int, default=2 << 20)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="lossmask-bench-cluster-"))
    if args.corpus is None:
        args.corpus = work / "corpus.jsonl"
        build_corpus(args.corpus, 20_000)
    subprocess.run(command(args.corpus, work / "local", "local", args.unit_bytes), check=True, cwd=ROOT)
    reference = digest(work / "local")
    results: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    loads = []
    for round_ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for nodes in results:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            for _ in range(nodes - 1):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            env = {**os.environ, "RAY_ADDRESS": cluster.address}
            out = work / f"ray-{nodes}"
            cpu, started = machine_cpu_seconds(), time.perf_counter()
            subprocess.run(command(args.corpus, out, "ray", args.unit_bytes), check=True, cwd=ROOT, env=env)
            results[nodes].append((time.perf_counter() - started, machine_cpu_seconds() - cpu))
            cluster.shutdown()
            assert digest(out) == reference, f"{nodes} node(s): not the local engine's bytes"
        print(f"round {round_ + 1} done (load {loads[-1]:.2f})", file=sys.stderr)
    manifest = json.loads((work / "local" / "_manifest.json").read_text())
    tokens = manifest["totals"]["tokens"] + manifest["totals"]["rows"]
    units = len({s["file"].split("-")[1] for s in manifest["shards"]})
    print(f"{args.corpus}: {tokens:,} tokens, {units} units; load at the rounds' starts: {loads}")
    print("| nodes (1 CPU each) | wall s (min-max) | tokens/s | machine CPU-s | same bytes as local |")
    print("|---|---|---|---|---|")
    for nodes, runs in results.items():
        wall = [w for w, _ in runs]
        median = statistics.median(wall)
        cpu = statistics.median(c for _, c in runs)
        print(
            f"| {nodes} | {median:.1f} ({min(wall):.1f}-{max(wall):.1f}) | {tokens / median:,.0f} | {cpu:.1f} | yes |"
        )
    one, two = (statistics.median(w for w, _ in results[n]) for n in (1, 2))
    print(f"2 nodes / 1 node: {one / two:.2f}x the throughput")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
