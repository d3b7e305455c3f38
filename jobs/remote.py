"""`--out s3://bucket/prefix`: the job runs into a local staging folder, then publishes it to the object store.

Why a staging folder: every guarantee of a local `--out` (the lock, the checkpoint after each shard, resume,
byte-identical output, `jobs/outdir.py`'s ownership rules) then holds unchanged for the run itself, and the object
store only ever receives finished files. The staging folder is `$LOSSMASK_STAGING/<digest of the URL>` (default
`$XDG_CACHE_HOME/lossmask/staging`, else `~/.cache/lossmask/staging`); a killed run resumes from it when rerun
on the same machine, and it is deleted once everything is published. It must hold the whole output.

Publishing, per part folder (OUT/eval first, then OUT): `_publishing.json` (the job's digest and the sha256 of
each file it is about to upload), then each shard and `_rejects.jsonl`, each uploaded under a hidden temporary
key (`.shard-00000.arrow.tmp`) and moved to its final key (a server-side copy, atomic per object: a failed or
killed upload leaves at most the temporary, or an incomplete multipart upload that the bucket's lifecycle rule
aborts, never a partial object under a final name), then `_manifest.json` last, then `_publishing.json` is
deleted. So a prefix with a `_manifest.json` and no `_publishing.json` is complete.

Ownership, as `jobs/outdir.py` has it for folders, proven the same way: objects listed by a `_manifest.json` (its
digest recomputed) or a `_publishing.json`, each whose sha256 (streamed) is the listed one, are that job's;
anything else is unknown. Unknown objects refuse the job (exit 2) unless `--overwrite` (they are then left alone),
and always when one has a name the job would write; another job's objects refuse it unless `--overwrite`, which
deletes them. The same job's objects are replaced by rerunning.

There is no lock on an object store: two runs into the same prefix from different machines are not prevented
(pyarrow's S3 client offers no conditional put). Runs on one machine share the staging folder, whose flock
makes the second one exit 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .. import storage
from ..errors import SetupError
from ..files import json_bytes
from ..pipeline.faults import crash_point
from ..pipeline.write import shard_name
from ..schemas.shards import MANIFEST_NAME, REJECTS_NAME
from .checkpoint import CHECKPOINT_NAME, Checkpoint, is_shard
from .outdir import PACK_SCRATCH, PART_FOLDERS, SCATTER_PREFIX, manifest_digest, units_in_making, writes_name

PUBLISHING_NAME = "_publishing.json"
Verify = Callable[[list[tuple[str, str]]], list[bool]]  # (URL, sha256) pairs -> whether each object has it


def staging_folder(url: str) -> Path:
    base = os.environ.get("LOSSMASK_STAGING") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lossmask", "staging"
    )
    return Path(base) / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class RemoteOut:
    """An object-store `--out`: its staging folder, what it holds, and the publishing of a finished job."""

    def __init__(self, url: str, overwrite: bool):
        self.url = url.rstrip("/")
        self.overwrite = overwrite
        self.staging = staging_folder(self.url)

    def check(self) -> None:
        """Refuse, before any work, an `--out` whose bucket does not exist or that names an object."""
        fs, path = storage.split(self.url)
        bucket = path.split("/", 1)[0]
        try:
            found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
            is_object = path != bucket and fs.get_file_info(path).type == pafs.FileType.File
        except (pa.ArrowException, OSError) as exc:
            raise SetupError(f"cannot reach --out {self.url}: {exc}") from None
        if not found:
            raise SetupError(
                f"--out {self.url}: the bucket {bucket} does not exist (or these credentials cannot see it)"
            )
        if is_object:
            raise SetupError(f"--out {self.url} is an object, not a prefix: choose another --out")

    def folder(self, part: str) -> str:
        return self.url if part == "train" else storage.join(self.url, "eval")

    def claim(self, part: str, digest: str, verify: Verify | None = None) -> None:
        """Refuse or clear the part's folder for the job `digest`, by the rules of the module docstring. `verify`
        checks objects' sha256 where the engine runs (Ray tasks), not by streaming them through this machine."""
        url = self.folder(part)
        owned, unknown = inventory(url, top=part == "train", verify=verify)
        blocking = [n for n in unknown if writes_name(n) or n == PUBLISHING_NAME]
        if blocking:
            raise SetupError(
                f"--out {url} holds {blocking[0]}, which lossmask did not write (no manifest there proves it) and "
                "which this job would write: move it away, or choose another --out"
            )
        if unknown and not self.overwrite:
            shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            raise SetupError(
                f"--out {url} holds objects lossmask did not write ({shown}): choose an empty prefix, or pass "
                "--overwrite to write beside them (they are left alone)"
            )
        others = [name for name, owner in owned.items() if owner != digest]
        if others and not self.overwrite:
            raise SetupError(
                f"--out {url} holds another job's output ({sum(map(is_shard, others))} shard(s); a different config, "
                "input, tokenizer or lossmask version): pass --overwrite to replace it, or choose another --out"
            )
        try:
            for name in sorted(others, key=lambda n: n == MANIFEST_NAME):  # its manifest last: proof to the end
                storage.delete(storage.join(url, name))
        except OSError as exc:
            raise SetupError(f"cannot delete another job's output in {url}: {exc}") from None

    def publish(self) -> None:
        """Upload the finished job in the staging folder (eval part first), then delete the staging folder."""
        for part in ("eval", "train"):
            local = self.staging if part == "train" else self.staging / "eval"
            if (local / MANIFEST_NAME).is_file():
                try:
                    publish_folder(local, self.folder(part))
                except OSError as exc:  # pyarrow's errors (network, permissions, quota) are OSErrors
                    raise SetupError(
                        f"cannot write {self.folder(part)}: {exc}; rerun the same command to publish again"
                    ) from None
        shutil.rmtree(self.staging, ignore_errors=True)

    def tidy(self) -> None:
        """Remove the staging folder when a refused or failed run left it empty (never a checkpoint, shards or
        rejects a rerun resumes from)."""
        for folder in (self.staging / "eval", self.staging):
            with contextlib.suppress(OSError):
                folder.rmdir()


def publish_folder(local: Path, url: str) -> None:
    manifest = json.loads((local / MANIFEST_NAME).read_text(encoding="utf-8"))
    files = {shard["file"]: shard["sha256"] for shard in manifest["shards"]}
    files[REJECTS_NAME] = manifest["rejects"]["sha256"]
    marker = {"digest": manifest_digest(manifest), "files": files}
    storage.put_bytes(json.dumps(marker, sort_keys=True).encode(), storage.join(url, PUBLISHING_NAME))
    for name in files:
        storage.put(local / name, storage.join(url, name))
        crash_point("object-uploaded")
    storage.put(local / MANIFEST_NAME, storage.join(url, MANIFEST_NAME))
    storage.delete(storage.join(url, PUBLISHING_NAME))


def inventory(url: str, top: bool, verify: Verify | None = None) -> tuple[dict[str, str], list[str]]:
    """The objects directly under `url`: lossmask's (name -> the digest of their job) and the unknown names. With
    `top`, a part folder (`eval/`) is left to its own inventory. Listed objects' sha256 are checked by `verify`
    when given (Ray tasks), else streamed here."""
    objects = storage.listing(url)
    names = sorted(n for n in objects if "/" not in n)
    nested = sorted(n for n in objects if "/" in n and not (top and n.split("/", 1)[0] in PART_FOLDERS))
    owned: dict[str, str] = {}
    manifest = _read_json(url, MANIFEST_NAME, names)
    if manifest is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            digest = manifest_digest(manifest)
            owned[MANIFEST_NAME] = digest
            listed = {s["file"]: s["sha256"] for s in manifest["shards"]}
            listed[REJECTS_NAME] = manifest["rejects"]["sha256"]
            owned.update(_proven(url, listed, names, digest, verify))
            if url.rstrip("/").endswith(f"/{PACK_SCRATCH}"):  # a planned pack's rows pass: its scatter files
                owned.update({SCATTER_PREFIX + s["file"]: digest for s in manifest["shards"]})
    checkpoint = _read_json(url, CHECKPOINT_NAME, names)
    if checkpoint is not None:  # a unit job writing here from Ray tasks (`BucketUnits`)
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
            digest = str(checkpoint["digest"])
            owned[CHECKPOINT_NAME] = digest
            owned.update(_proven(url, {REJECTS_NAME: checkpoint["rejects_sha256"]}, names, digest, verify))
            # Its units' files, finished or not, by name: streaming every finished shard here would put the whole
            # output through this machine; `BucketUnits.load` checks the finished ones in Ray tasks instead.
            every_unit = {"unit_total": checkpoint["unit_total"], "units": {}}
            owned.update(dict.fromkeys(units_in_making(names, every_unit), digest))
            # A planned pack's packed shards, likewise by name (the finished ones are checked in tasks on load).
            owned.update(dict.fromkeys(map(shard_name, range(int(checkpoint.get("packed_total", 0)))), digest))
    marker = _read_json(url, PUBLISHING_NAME, names)
    if marker is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
            digest = str(marker["digest"])
            owned[PUBLISHING_NAME] = digest
            owned.update(_proven(url, dict(marker["files"]), names, digest, verify))
    for name in list(owned):  # a failed upload's temporary (`storage.put`) is its job's too
        owned.setdefault(f".{name}.tmp", owned[name])
    owned = {n: d for n, d in owned.items() if n in names}
    return owned, [n for n in names if n not in owned] + nested


def _proven(
    url: str, listed: dict[str, str], names: list[str], digest: str, verify: Verify | None = None
) -> dict[str, str]:
    present = [(name, sha256) for name, sha256 in listed.items() if name in names]
    if verify is not None:
        intact = verify([(storage.join(url, name), sha256) for name, sha256 in present])
    else:
        intact = [storage.sha256(storage.RemoteFile(storage.join(url, name))) == sha256 for name, sha256 in present]
    return {name: digest for (name, _), ok in zip(present, intact, strict=True) if ok}


def _read_json(url: str, name: str, names: list[str]) -> dict[str, Any] | None:
    if name not in names:
        return None
    try:
        data = json.loads(storage.read_bytes(storage.join(url, name)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class BucketUnits:
    """Where a unit job run by Ray tasks keeps its state when `--out` is an object store (`jobs.units`): the
    tasks upload their units' files there themselves, so the checkpoint (`_checkpoint.json`, which proves them
    ours, as `inventory` reads it), the joined `_rejects.jsonl` and the manifest go there too; nothing of the
    data passes through the driver's staging folder, which holds only the lock. A killed driver resumes from the
    bucket's checkpoint, from any machine."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def where(self, name: str) -> str:
        return storage.join(self.url, name)

    def load(self, digest: str, verify: Callable[[list[tuple[str, str]]], list[bool]]) -> Checkpoint | None:
        """The bucket's checkpoint of this job, keeping the finished units whose objects are all there with their
        sha256 (checked by `verify`, which streams them where the engine runs: Ray tasks, not this machine);
        a unit with a missing or changed object is written again. None when there is no checkpoint of this job."""
        names = storage.listing(self.url)
        if CHECKPOINT_NAME not in names:
            return None
        checkpoint = Checkpoint.parse(storage.read_bytes(self.where(CHECKPOINT_NAME)))
        if checkpoint is None or checkpoint.digest != digest:
            return None
        files = {
            unit: [(s["file"], s["sha256"]) for s in summary["shards"]]
            + [(summary["rejects"]["file"], summary["rejects"]["sha256"])]
            for unit, summary in checkpoint.units.items()
        }
        present = {unit: all(name in names for name, _ in listed) for unit, listed in files.items()}
        checked = [(self.where(name), sha) for unit, listed in files.items() if present[unit] for name, sha in listed]
        in_units = {name for listed in files.values() for name, _ in listed}
        loose = [(s.file, s.sha256) for s in checkpoint.shards if s.file not in in_units and s.file in names]
        checked += [(self.where(name), sha) for name, sha in loose]  # a planned pack's finished packed shards
        intact = dict(zip((url for url, _ in checked), verify(checked), strict=True))
        for unit, listed in files.items():
            if not present[unit] or not all(intact[self.where(name)] for name, _ in listed):
                del checkpoint.units[unit]
        kept = {name for unit in checkpoint.units for name, _ in files[unit]}
        kept |= {name for name, _ in loose if intact[self.where(name)]}
        checkpoint.shards = [shard for shard in checkpoint.shards if shard.file in kept]
        return checkpoint

    def where_units(self) -> str:
        return self.url

    def save(self, checkpoint: Checkpoint, first: bool = False) -> None:
        storage.put_bytes(checkpoint.to_bytes(), self.where(CHECKPOINT_NAME))
        if not first:
            crash_point("checkpoint-saved")

    def join_rejects(self, parts: list[str], checkpoint: Checkpoint) -> dict[str, Any]:
        """`_rejects.jsonl` from the units' parts in order; its sha256 goes into the checkpoint before it gets
        its name, so that it is provably this job's."""
        digest, size = hashlib.sha256(), 0
        for part in parts:
            for chunk in storage.chunks(self.where(part)):
                digest.update(chunk)
                size += len(chunk)
        checkpoint.rejects_bytes, checkpoint.rejects_sha256 = size, digest.hexdigest()
        self.save(checkpoint)
        storage.put_chunks((c for part in parts for c in storage.chunks(self.where(part))), self.where(REJECTS_NAME))
        return {"file": REJECTS_NAME, "bytes": size, "sha256": checkpoint.rejects_sha256}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        written = {k: v for k, v in manifest.items() if not k.startswith("_")}
        storage.put_bytes(json_bytes(written), self.where(MANIFEST_NAME))

    def finish(self, parts: list[str], checkpoint: Checkpoint) -> None:
        """After the manifest: the parts, the temporaries dead attempts left, then the checkpoint."""
        names = storage.listing(self.url)
        leftovers = units_in_making(list(names), {"unit_total": checkpoint.unit_total, "units": {}})
        for name in [*parts, *(n for n in leftovers if n.startswith(".")), CHECKPOINT_NAME]:
            if name in names:
                storage.delete(self.where(name))
