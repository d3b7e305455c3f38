"""`--out` is the user's folder: a job creates, replaces and deletes only files it can prove are lossmask's.

What counts as proof, file by file (`Inventory.of`):

- `_checkpoint.json` that parses as a checkpoint, and `_manifest.json` that parses as a manifest, each naming the
  job it belongs to by its digest (the checkpoint stores it; a manifest's is recomputed from the version, config
  and fingerprints it records, exactly as `job_digest` made it);
- the shards either lists, when the file's sha256 is the listed one; `_rejects.jsonl` when its sha256 (a
  manifest) or the sha256 of its first `rejects_bytes` (a checkpoint: a killed run appends after it) matches;
- the one shard an unfinished run can have written after its last checkpoint: shards are written in order, so it
  is the next name (`shard_name(len(checkpoint.shards))`), finished or as its temporary;
- in a unit job (`jobs.units`), the finished units' rejects parts (`_rejects-u<unit>.jsonl`) whose sha256 is the
  listed one, and the files a unit still being written can have: `shard-u<unit>-<k>.arrow` and its rejects
  part, for each unit of the job the checkpoint does not list as finished;
- in a planned `--pack` (`jobs.planned_pack`), every packed shard its plan has (`packed_total`, from the
  checkpoint: the tasks write them in any order), and in its rows folder (`OUT/_pack/`, and only there) the
  scatter file of each shard the rows manifest lists (`pack-<shard>`, by name: written after that manifest, from
  those shards);
- the temporaries of all of these (`files.temp_path`) and the lock file.

Everything else is unknown and never touched. A folder holding unknown files is refused (exit 2) unless
`--overwrite`, and even then a job refuses to start when an unknown file has a name the job would write. A folder
holding another job's output is refused unless `--overwrite`, which deletes exactly that job's proven files. The
same job's files are replaced (or resumed from) without asking: rerunning a command is never an error.

`OutputLock` makes a second run into the same folder exit 2 while the first is alive (`fcntl.flock`, released by
the kernel when the holder dies, so a killed run never leaves the folder locked).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SetupError
from ..files import file_sha256, is_temporary, temp_path
from ..pipeline.write import shard_name
from ..schemas.shards import MANIFEST_NAME, REJECTS_NAME
from .checkpoint import CHECKPOINT_NAME, Checkpoint, is_shard, job_digest, prefix_sha256

LOCK_NAME = ".lossmask.lock"
# A planned `--pack` (`jobs.planned_pack`) writes its rows pass into OUT/_pack/, and each rows shard's scatter
# file beside it as `pack-<shard>`.
PACK_SCRATCH = "_pack"
SCATTER_PREFIX = "pack-"
# Folders a job's other parts write (`eval:` -> OUT/eval/, a planned pack's rows): shard sets of their own, each
# claimed on its own.
PART_FOLDERS = ("eval", PACK_SCRATCH)
FIXED_NAMES = (MANIFEST_NAME, REJECTS_NAME, CHECKPOINT_NAME)


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The digest of the job that wrote a manifest (the one `jobs.prepare` computed when it ran)."""
    return job_digest(
        {
            "version": manifest["lossmask_version"],
            "config": manifest["config"],
            "fingerprints": manifest["fingerprints"],
        }
    )


# The files of one work unit in the making: its shards and its rejects part (`pipeline.unit_writer`).
UNIT_FILE = re.compile(r"(?:shard-u(\d{5})-\d{3}\.arrow|_rejects-u(\d{5})\.jsonl)")


def units_in_making(names: list[str], checkpoint: dict[str, Any]) -> list[str]:
    """The names (and temporaries) among `names` that a unit job's units not yet finished can have written: in
    any order, on Ray. Only names of the job's own units (`unit_total`) count."""
    total = int(checkpoint.get("unit_total", 0))
    finished = {int(k) for k in checkpoint.get("units", {})}
    found = []
    for name in names:
        bare = name[1 : -len(".tmp")] if is_temporary(name) else name
        if (match := UNIT_FILE.fullmatch(bare)) is not None:
            unit = int(match.group(1) or match.group(2))
            if unit < total and unit not in finished:
                found.append(name)
    return found


def writes_name(name: str) -> bool:
    """Whether a prepare job could write a file of this name (so an unknown one there blocks it)."""
    if is_temporary(name):
        name = name[1 : -len(".tmp")]
    return name in FIXED_NAMES or is_shard(name) or UNIT_FILE.fullmatch(name) is not None


@dataclass
class Inventory:
    """What is in an output folder: lossmask's files by the job (digest) that wrote them, and the rest."""

    owned: dict[str, str] = field(default_factory=dict)  # file name -> digest of the job it belongs to
    unknown: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, out: Path) -> Inventory:
        names = sorted(p.name for p in out.iterdir())
        owned: dict[str, str] = {}
        manifest = _read_json(out / MANIFEST_NAME)
        if manifest is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):  # else not a manifest of ours
                owned.update(_manifest_files(out, manifest))
        checkpoint = _read_json(out / CHECKPOINT_NAME)
        if checkpoint is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                owned.update(_checkpoint_files(out, checkpoint))
        for name in list(owned):
            owned.setdefault(temp_path(Path(name)).name, owned[name])
        parts = [n for n in PART_FOLDERS if (out / n).is_dir()]
        unknown = [n for n in names if n not in owned and n != LOCK_NAME and n not in parts]
        return cls({n: d for n, d in owned.items() if n in names}, unknown)

    def of_job(self, digest: str) -> list[str]:
        return [name for name, owner in self.owned.items() if owner == digest]

    def other_jobs(self, digest: str) -> list[str]:
        return [name for name, owner in self.owned.items() if owner != digest]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _manifest_files(out: Path, manifest: dict[str, Any]) -> dict[str, str]:
    digest = manifest_digest(manifest)
    files = {MANIFEST_NAME: digest}
    for shard in manifest["shards"]:
        if _matches(out / shard["file"], shard["sha256"]):
            files[shard["file"]] = digest
        if out.name == PACK_SCRATCH:  # a planned pack's rows pass: the scatter file of each of its shards
            files[SCATTER_PREFIX + shard["file"]] = digest
    rejects = out / REJECTS_NAME
    listed = manifest.get("rejects")
    if rejects.is_file():
        if listed is not None:
            proven = _matches(rejects, listed["sha256"])
        else:  # manifests before 0.2 did not list it: every rejected or dropped record is one line
            records = manifest["records"]
            with open(rejects, "rb") as handle:
                proven = sum(1 for _ in handle) == records["rejected"] + records["dropped"]
        if proven:
            files[REJECTS_NAME] = digest
    return files


def _checkpoint_files(out: Path, data: dict[str, Any]) -> dict[str, str]:
    digest = str(data["digest"])
    files = {CHECKPOINT_NAME: digest}
    shards = data["shards"]
    for shard in shards:
        if _matches(out / shard["file"], shard["sha256"]):
            files[shard["file"]] = digest
    files[shard_name(len(shards))] = digest  # the one its run was writing when it stopped
    files.update(dict.fromkeys(map(shard_name, range(int(data.get("packed_total", 0)))), digest))
    for unit in data.get("units", {}).values():
        if _matches(out / unit["rejects"]["file"], unit["rejects"]["sha256"]):
            files[unit["rejects"]["file"]] = digest
    files.update(dict.fromkeys(units_in_making([p.name for p in out.iterdir()], data), digest))
    rejects = out / REJECTS_NAME
    expected = data.get("rejects_sha256")
    if rejects.is_file() and expected and prefix_sha256(rejects, int(data["rejects_bytes"])) == expected:
        files[REJECTS_NAME] = digest
    return files


def _matches(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


class OutputLock:
    """An exclusive lock on an output folder for one job's lifetime (see the module docstring)."""

    def __init__(self, out: Path):
        self.path = out / LOCK_NAME
        self.fd = -1

    def acquire(self) -> OutputLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise SetupError(
                    f"another prepare (pid {holder}) is writing to {self.path.parent}: wait for it to finish, or "
                    "choose another --out"
                ) from None
            try:  # the holder may have removed the file between our open and our lock: lock the one in place
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiting run then locks a new file
        finally:
            os.close(self.fd)
            self.fd = -1


def open_output(out: Path) -> OutputLock:
    """Create `out` if needed and lock it; one line and exit 2 when that is impossible."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        return OutputLock(out).acquire()
    except OSError as exc:
        raise SetupError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def claim(out: Path, digest: str, resume: bool, overwrite: bool) -> Checkpoint | None:
    """Make `out` ready for the job `digest`: the checkpoint to resume from (or None), after deleting the files of
    this job a resumed run does not keep and, with `overwrite`, another job's. Refuses (SetupError) as the module
    docstring says."""
    inventory = Inventory.of(out)
    if inventory.unknown:
        blocking = [n for n in inventory.unknown if writes_name(n)]
        if blocking:
            raise SetupError(
                f"--out {out} holds {blocking[0]}, which lossmask did not write (no manifest or checkpoint there "
                "proves it) and which this job would write: move it away, or choose another --out"
            )
        if not overwrite:
            shown = ", ".join(inventory.unknown[:3]) + (", ..." if len(inventory.unknown) > 3 else "")
            raise SetupError(
                f"--out {out} holds files lossmask did not write ({shown}): choose an empty or new folder, or pass "
                "--overwrite to write beside them (they are left alone)"
            )
    others = inventory.other_jobs(digest)
    if others and not overwrite:
        shards = sum(is_shard(n) for n in others)
        raise SetupError(
            f"--out {out} holds another job's output ({shards} shard(s); a different config, input, tokenizer or "
            f"lossmask version): pass --overwrite to replace it, or choose another --out"
        )
    checkpoint = Checkpoint.load(out, digest) if resume else None
    kept = (
        {s.file for s in checkpoint.shards} | set(checkpoint.unit_files()) | {REJECTS_NAME, CHECKPOINT_NAME}
        if checkpoint
        else set()
    )
    if checkpoint is not None and (partial := checkpoint.partial_rejects()) is not None:
        kept.add(partial[0])
    for name in others + [n for n in inventory.of_job(digest) if n not in kept]:
        (out / name).unlink(missing_ok=True)
    return checkpoint


def output_error(exc: OSError, out: Path) -> SetupError | None:
    """A failed write as one line that says what to do (the checkpoint lets the same command resume); None when
    the error is not about the output (it is then not ours to explain here)."""
    where = exc.filename or out
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SetupError(f"no space left writing {where}: free some, then rerun the same command to resume")
    inside = exc.filename is not None and Path(os.fsdecode(exc.filename)).resolve().is_relative_to(out.resolve())
    if exc.errno == errno.EROFS or (inside and exc.errno in (errno.EACCES, errno.EPERM)):
        return SetupError(f"cannot write {where}: {exc.strerror}; choose a writable --out")
    if inside:
        return SetupError(f"cannot write {where}: {exc.strerror or exc}")
    return None
