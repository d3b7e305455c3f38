"""Running lossmask as an attacker's input would meet it: the real CLI in a subprocess, under a memory cap
(`RLIMIT_AS`, so a record held whole, a bomb inflated in memory or a template's runaway value kills the run
instead of passing slowly) and a time cap (the subprocess timeout, so a hang fails the test instead of the
suite). Each run is checked for what every hostile input must leave: no traceback, a finished job, a manifest
whose counts add up, and every record that was not written in `_rejects.jsonl` with its place and reason.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..support import FIXTURE_TOKENIZER

# Address space for one run: lossmask with the fixture tokenizer, one process, peaks near 150 MB of RSS and
# maps ~600 MB (libraries, thread stacks); every bomb here inflates to at least twice this cap.
MEMORY_CAP = 1 << 30
TIME_CAP = 60.0  # seconds; each run here takes a few


def cap_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment (so the child imports the same lossmask), with few threads and malloc arenas: each
    thread's arena reserves 64 MB of address space, which the cap counts although nothing uses it."""
    return {
        **os.environ,
        "MALLOC_ARENA_MAX": "2",
        "RAYON_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        **extra,
    }


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["records"]

    def rejected(self) -> dict[str, str]:
        """source -> reason of every record not written."""
        return {r["source"]: r["reason"] for r in self.rejects}

    def reject_at(self, source: str) -> dict[str, Any]:
        found = [r for r in self.rejects if r["source"] == source]
        assert len(found) == 1, f"expected one reject at {source}, got {self.rejects}"
        return found[0]


def run_capped(args: list[str], *, timeout: float = TIME_CAP, cap: int = MEMORY_CAP, **env: str) -> Run:
    """`python -m lossmask.cli ARGS` under the caps. A run past the time cap fails the test (the child is killed)."""
    command = [sys.executable, "-m", "lossmask.cli", *args]
    done = subprocess.run(
        command,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: cap_memory(cap),
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert "MemoryError" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


def prepare_capped(
    tmp_path: Path, inputs: list[Path | str], *options: str, out_name: str = "out", workers: int = 1, **kw: Any
) -> Run:
    """`lossmask prepare` on INPUTS with the fixture tokenizer (one process by default: the cap is on all of it;
    workers inherit it, each); checks the job finished and accounted for every record, and returns it with its
    manifest and rejects."""
    out = tmp_path / out_name
    args = ["prepare", *map(str, inputs), "--out", str(out), "--workers", str(workers), "-q"]
    if "--tokenizer" not in options:
        args += ["--tokenizer", str(FIXTURE_TOKENIZER)]
    run = run_capped([*args, *options], **kw)
    run.out = out
    run.manifest = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))
    if run.manifest["records"]["written"]:
        assert run.returncode == 0, run.stderr
    else:  # a job that wrote nothing still finishes and accounts for everything, but exits 2 saying why
        assert "records was written" in setup_error(run) or "hold no records" in run.stderr, run.stderr
    rejects = out / "_rejects.jsonl"
    run.rejects = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    counts = run.counts
    assert counts["read"] == counts["written"] + counts["rejected"] + counts["dropped"], counts
    assert len(run.rejects) == counts["rejected"] + counts["dropped"], (counts, run.rejects)
    for reject in run.rejects:
        assert reject["reason"] and reject["detail"] and reject["source"], reject
    return run


def setup_error(run: Run) -> str:
    """The one line a job that cannot run prints: exit 2, `lossmask: error: ...`, nothing else."""
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("lossmask: error: "), lines[0]
    return lines[0]


def conversation(user: str = "hi", answer: str = "ok") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
