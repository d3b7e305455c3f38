"""Crash-safe resume: what a killed run had finished, so the same command can finish it.

After each completed shard, `_checkpoint.json` is replaced atomically with: the job's digest (lossmask version,
output-relevant config, fingerprints of inputs, tokenizer and template), the finished shards, the index of the
next input record, the length of `_rejects.jsonl` at that point, and the record accounting. Shards end only at
record boundaries, so everything before `next_record` is final. A resumed run truncates the rejects to that
length, skips those records, and goes on writing shards from the next index: the result is byte-identical to a
run that never stopped. Anything written after the last checkpoint (a half-written shard, later rejects) is
discarded and recomputed.

Packed output (`--pack`, `--concat`) is made from many records at once, so a finished shard can end in the middle
of what a window or the stream of documents will give. `replay` says how to make the rest again: the combiner's
`ResumeState` after the last written row, as a dict (`combine`: from which record to re-read, and what to skip
of what is made again; records before `next_record` are processed again but not counted or rejected again);
`packing` holds the packing counts so far.

A unit job (`jobs.units`) checkpoints per finished work unit instead: the unit's summary (its shards, rejects
part and accounting) is added after the unit is written. A resumed run redoes only the units not listed, from
their start; which units finish first does not matter (on Ray they finish in any order).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..files import file_sha256, temp_path
from ..pipeline.faults import crash_point
from ..pipeline.write import ShardInfo
from ..schemas.shards import SHARD_SUFFIX

CHECKPOINT_NAME = "_checkpoint.json"


@dataclass
class Checkpoint:
    digest: str
    shards: list[ShardInfo] = field(default_factory=list)
    next_record: int = 0
    rejects_bytes: int = 0
    rejects_sha256: str = ""  # of those first `rejects_bytes` bytes: proves the file is this job's (`jobs.outdir`)
    accounting: dict[str, Any] = field(default_factory=dict)
    replay: dict[str, int] = field(default_factory=dict)  # the combiner's ResumeState.to_dict(); {} = from the start
    packing: dict[str, int] = field(default_factory=dict)
    # A unit job (`jobs.units`): how many units it has, each finished unit's `UnitSummary` as a dict (by unit
    # index), and the counting pass's results (`UnitCount`s as dicts, [] until made), so a resumed run redoes
    # neither. `shards` then lists the finished units' shards, in unit order.
    unit_total: int = 0
    units: dict[str, dict[str, Any]] = field(default_factory=dict)
    unit_counts: list[dict[str, Any]] = field(default_factory=list)
    # The local engine's unit in progress, as of its last completed shard (`UnitWriter.progress`); {} = none.
    # Its shards are in `shards` too; its rejects part is still its temporary, `rejects_file`.
    partial: dict[str, Any] = field(default_factory=dict)
    # A planned `--pack` (`jobs.planned_pack`): how many packed shards its plan has (0 until planned; `shards`
    # then lists the finished ones, in any order), and the scatter files written (name -> sha256).
    packed_total: int = 0
    scattered: dict[str, str] = field(default_factory=dict)

    def unit_files(self) -> dict[str, str]:
        """The finished units' rejects parts, by name, with their sha256 (their shards are in `shards`)."""
        return {u["rejects"]["file"]: u["rejects"]["sha256"] for u in self.units.values()}

    def partial_rejects(self) -> tuple[str, int, str] | None:
        """The unit in progress's rejects part so far: (its temporary's name, bytes, sha256 of those bytes)."""
        if not self.partial:
            return None
        return self.partial["rejects_file"], self.partial["rejects_bytes"], self.partial["rejects_sha256"]

    def save(self, out: Path) -> None:
        self.write(out)
        crash_point("checkpoint-saved")

    def write(self, out: Path) -> None:
        """Replace the checkpoint atomically. A job writes one before anything else, so that every file it makes
        is proven its own (`jobs.outdir`) even when it is killed before its first shard."""
        path = out / CHECKPOINT_NAME
        temp = temp_path(path)
        temp.write_bytes(self.to_bytes())
        temp.replace(path)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def parse(cls, text: str | bytes) -> Checkpoint | None:
        """A checkpoint from its JSON; None when it is not one."""
        try:
            data = json.loads(text)
            return cls(
                digest=data["digest"],
                shards=[ShardInfo(**s) for s in data["shards"]],
                next_record=int(data["next_record"]),
                rejects_bytes=int(data["rejects_bytes"]),
                rejects_sha256=str(data.get("rejects_sha256", "")),
                accounting=data["accounting"],
                replay={str(k): int(v) for k, v in data["replay"].items()},
                packing={str(k): int(v) for k, v in data.get("packing", {}).items()},
                unit_total=int(data.get("unit_total", 0)),
                units={str(k): dict(v) for k, v in data.get("units", {}).items()},
                unit_counts=[dict(c) for c in data.get("unit_counts", [])],
                partial=dict(data.get("partial", {})),
                packed_total=int(data.get("packed_total", 0)),
                scattered={str(k): str(v) for k, v in data.get("scattered", {}).items()},
            )
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None

    @classmethod
    def load(cls, out: Path, digest: str) -> Checkpoint | None:
        """The checkpoint of an unfinished run of this same job whose shards are intact, else None."""
        path = out / CHECKPOINT_NAME
        if not path.is_file():
            return None
        checkpoint = cls.parse(path.read_bytes())
        if checkpoint is None:
            return None
        if checkpoint.digest != digest:
            return None
        listed = {shard.file: shard.sha256 for shard in checkpoint.shards} | checkpoint.unit_files()
        for name, sha256 in listed.items():
            if not (out / name).is_file() or file_sha256(out / name) != sha256:
                return None
        if (partial := checkpoint.partial_rejects()) is not None:
            name, size, sha256 = partial
            if not (out / name).is_file() or prefix_sha256(out / name, size) != sha256:
                return None
        return checkpoint


def prefix_sha256(path: Path, length: int) -> str | None:
    """The sha256 of a file's first `length` bytes; None when it is shorter."""
    digest = hashlib.sha256()
    remaining = length
    with open(path, "rb") as handle:
        while remaining:
            chunk = handle.read(min(remaining, 1 << 20))
            if not chunk:
                return None
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def job_digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def is_shard(name: str) -> bool:
    return name.startswith("shard-") and name.endswith(SHARD_SUFFIX)
