"""Open a folder that `lossmask prepare` wrote: its manifest, its layout, and its shards, checked before use.

Everything that reads shards back (the loader, the exports, `lossmask inspect`, the trainer, the audit) goes
through `ShardSet`, so the checks are made once: the manifest exists and has a schema version this code knows,
every shard it lists is there with the columns and types of its layout (`LAYOUTS`: the SFT rows and packed
layouts of `schemas.shards`, the preference pairs and KTO layouts of `schemas.preference`) and the row count the
manifest says, and, on request, the bytes match the manifest's sha256: all at once
(`verify()`), or each shard the first time it is opened (`verify=True`, for readers that may never reach the
last shard). Shards are read in manifest order, which is input order, never in the order a directory listing
happens to give.

The folder may be local or on an object store (`s3://bucket/prefix`, through `storage`): the same checks, the same
batches. Where the bytes come from is decided in one place, the last section of this module: a local shard is
memory-mapped; an object is opened as a random-access file (each read a ranged GET, which is what
`pa.ipc.open_file` needs: the footer, then each record batch where it lies), its presence checked against one
listing of the prefix rather than one request per shard, its sha256 streamed in one GET.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .. import storage
from ..errors import SetupError
from ..schemas.layouts import LAYOUTS
from ..schemas.shards import LAYOUT_PACKED, LAYOUT_ROWS, MANIFEST_NAME, SCHEMA_VERSION, SHARD_SUFFIX
from ..storage import RemoteFile

__all__ = ["LAYOUTS", "Location", "ShardFile", "ShardSet", "file_size", "holds_shards", "location", "read_manifest"]

# A folder or file of a prepared output: a local path, or an object (`str()` is its URL). Both have `name`, `/`
# and `str()`, which is all that messages, digests and the exports' sidecars use.
Location = Path | RemoteFile
_SHARD_GLOB = f"shard-*{SHARD_SUFFIX}"


@dataclass(frozen=True)
class ShardFile:
    """One shard as the manifest lists it."""

    path: Location
    rows: int
    sha256: str | None


class ShardSet:
    """The shards of one prepared folder, in manifest order.

    >>> shards = ShardSet("out/shards")            # doctest: +SKIP
    >>> shards.layout, shards.num_rows             # doctest: +SKIP
    ('rows', 652)
    >>> for index, batch in shards.iter_batches(["input_ids", "target_ids"]): ...   # doctest: +SKIP
    """

    def __init__(
        self, directory: str | Location, manifest: dict[str, Any] | None = None, *, verify: bool = False
    ) -> None:
        """`manifest` is read from `directory` (a path or an `s3://` URL) when not given; `verify` checks each
        shard's sha256 when first opened."""
        self.directory: Location = location(directory)
        manifest_path = self.directory / MANIFEST_NAME
        self.manifest: dict[str, Any] = read_manifest(self.directory) if manifest is None else manifest
        self.verify_on_open = verify
        self._verified: set[int] = set()
        self.layout: str = self.manifest.get("layout", LAYOUT_ROWS)
        if self.layout not in LAYOUTS:
            raise SetupError(f"{manifest_path} has an unknown layout {self.layout!r}")
        self.schema, known_version = LAYOUTS[self.layout]
        version = self.manifest.get("schema_version")
        if version != known_version:
            raise SetupError(
                f"{manifest_path} has schema_version {version!r}; this lossmask reads version {known_version} "
                f"of the {self.layout} layout"
            )
        self.files: list[ShardFile] = []
        entries = self.manifest.get("shards", [])
        present = _present(self.directory, [entry["file"] for entry in entries])
        for entry in entries:
            path = self.directory / entry["file"]
            if not present(entry["file"]):
                raise SetupError(f"shard {path} is listed in {MANIFEST_NAME} but missing")
            self.files.append(ShardFile(path=path, rows=int(entry["rows"]), sha256=entry.get("sha256")))

    @classmethod
    def unlisted(cls, directory: str | Location) -> ShardSet:
        """The `shard-*.arrow` files of a folder without a manifest (shards written by hand), in name order.

        There is nothing to check them against but their own schema: the layout is the one the first shard's
        metadata names, the row counts are the files' own, and there is no sha256.
        """
        directory = location(directory)
        paths = [directory / name for name in _shard_names(directory)]
        layout = LAYOUT_ROWS
        if paths:
            with open_random(paths[0]) as source:
                metadata = pa.ipc.open_file(source).schema.metadata or {}
            layout = metadata.get(b"lossmask.layout", LAYOUT_ROWS.encode()).decode()
        shards = [{"file": path.name, "rows": _count_rows(path)} for path in paths]
        version = LAYOUTS.get(layout, (None, SCHEMA_VERSION))[1]
        return cls(directory, {"schema_version": version, "layout": layout, "shards": shards})

    @property
    def packed(self) -> bool:
        return self.layout == LAYOUT_PACKED

    @property
    def num_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def tokenizer_path(self) -> str | None:
        return self.manifest.get("config", {}).get("tokenizer")

    @property
    def vocab_size(self) -> int | None:
        value = self.manifest.get("tokenizer", {}).get("vocab_size")
        return None if value is None else int(value)

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest (reads every byte once)."""
        for index in range(len(self.files)):
            self.verify_shard(index)

    def verify_shard(self, index: int) -> None:
        """Check shard `index`'s sha256 against the manifest, once per ShardSet (`_sha256`: a local shard through
        its memory map, whose pages stay cached for the reads that follow; an object streamed)."""
        shard = self.files[index]
        if index in self._verified or shard.sha256 is None:
            return
        digest = _sha256(shard.path)
        if digest != shard.sha256:
            raise SetupError(f"shard {shard.path} does not match the sha256 in {MANIFEST_NAME}: it changed")
        self._verified.add(index)

    def check(self) -> None:
        """Open every shard now: the columns and types of the layout (and the sha256 with `verify=True`)."""
        for index in range(len(self.files)):
            self.open(index)

    def open(self, index: int, columns: Sequence[str] | None = None) -> pa.ipc.RecordBatchFileReader:
        """A reader of shard `index` (memory-mapped, or ranged reads of an object) that decodes only `columns`
        (all when None), schema checked."""
        if self.verify_on_open:
            self.verify_shard(index)
        shard = self.files[index]
        source = open_random(shard.path)
        try:
            reader = pa.ipc.open_file(source)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SetupError(f"shard {shard.path} is not an Arrow IPC file: {exc}") from None
        self._check_schema(shard, reader.schema)
        if columns is None:
            return reader
        fields = [self.schema.get_field_index(name) for name in columns]
        if -1 in fields:
            unknown = [name for name, i in zip(columns, fields, strict=True) if i < 0]
            raise SetupError(f"no column {unknown} in the {self.layout} layout")
        options = pa.ipc.IpcReadOptions(included_fields=fields)
        return pa.ipc.open_file(source, options=options)

    def batches(self, index: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The record batches of shard `index`, in order, one in memory at a time; row count checked at the end."""
        reader = self.open(index, columns)
        rows = 0
        for batch_index in range(reader.num_record_batches):
            batch = reader.get_batch(batch_index)
            rows += batch.num_rows
            yield batch
        self.check_rows(index, rows)

    def iter_batches(
        self, columns: Sequence[str] | None = None, start: int = 0
    ) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(shard index, record batch) for every record batch of every shard, in order, from row `start` on.

        Shards that end before `start` are not opened (the manifest's row counts say where they end); the record
        batch that holds row `start` comes sliced to begin there.
        """
        first = 0  # row number of the first row of the shard or batch at hand
        for index, shard in enumerate(self.files):
            if first + shard.rows <= start:
                first += shard.rows
                continue
            for batch in self.batches(index, columns):
                if first + batch.num_rows > start:
                    yield index, batch.slice(max(start - first, 0))
                first += batch.num_rows

    def check_rows(self, index: int, rows: int) -> None:
        shard = self.files[index]
        if rows != shard.rows:
            raise SetupError(f"shard {shard.path} has {rows} rows but {MANIFEST_NAME} says {shard.rows}")

    def _check_schema(self, shard: ShardFile, schema: pa.Schema) -> None:
        found = [(f.name, f.type) for f in schema]
        expected = [(f.name, f.type) for f in self.schema]
        if found != expected:
            missing = sorted({n for n, _ in expected} - {n for n, _ in found})
            detail = f"missing {missing}" if missing else f"columns {found} instead of {expected}"
            raise SetupError(f"shard {shard.path} does not have the {self.layout} layout of {MANIFEST_NAME}: {detail}")


def read_manifest(directory: str | Location) -> dict[str, Any]:
    """The folder's `_manifest.json`; a folder without one (or a bucket that does not exist) is one line."""
    directory = location(directory)
    manifest_path = directory / MANIFEST_NAME
    text = _manifest_text(manifest_path)
    if text is None:
        raise SetupError(f"{directory} has no {MANIFEST_NAME}: pass a folder written by `lossmask prepare --out`")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SetupError(f"{manifest_path} is not valid JSON: {exc}") from None


def holds_shards(folder: str | Location) -> bool:
    """Whether `folder` is a prepared folder (a manifest) or a folder of shards without one. A URL costs one
    delimited listing of its prefix; a glob or a URL naming an object holds no shards."""
    where = location(folder)
    if isinstance(where, RemoteFile):
        if glob.has_magic(where.url.partition("://")[2]):
            return False
        names = storage.listing(where.url, recursive=False)
        return MANIFEST_NAME in names or any(fnmatch.fnmatchcase(name, _SHARD_GLOB) for name in names)
    return where.is_dir() and ((where / MANIFEST_NAME).is_file() or any(where.glob(_SHARD_GLOB)))


def _count_rows(path: Location) -> int:
    """Rows of an Arrow IPC file, decoding only its first column."""
    with open_random(path) as source:
        reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=[0]))
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


# Where the bytes come from: the only code here that tells a local folder from an object store.


def location(folder: str | Location) -> Location:
    """A folder as the user named it: an object-store URL (`s3://bucket/prefix`, trailing `/` or not) names a
    prefix of objects, anything else a local path."""
    if isinstance(folder, RemoteFile):
        return folder
    if storage.is_url(folder):
        return RemoteFile(str(folder).rstrip("/"))
    return Path(folder)


def open_random(path: Location) -> pa.NativeFile:
    """A shard's bytes for `pa.ipc.open_file`: a local file memory-mapped (no copy on the heap, pages shared and
    cached), an object as a random-access file whose reads are ranged GETs (only the footer and the batches read
    are fetched, never the whole object up front). Unreadable is one line, exit 2."""
    try:
        if isinstance(path, RemoteFile):
            return path.open_random()
        return pa.memory_map(str(path), "r")
    except (pa.ArrowException, OSError) as exc:
        raise SetupError(f"cannot read shard {path}: {exc}") from None


def _sha256(path: Location) -> str:
    """The sha256 of a shard's bytes: a local one hashed through its memory map, an object streamed (one GET,
    read in chunks: `storage.sha256`, never its ETag)."""
    try:
        if isinstance(path, RemoteFile):
            return storage.sha256(path)
        with pa.memory_map(str(path), "r") as source:
            return hashlib.sha256(source.read_buffer()).hexdigest()
    except (pa.ArrowException, OSError) as exc:
        raise SetupError(f"cannot read shard {path}: {exc}") from None


def file_size(path: Location) -> int | None:
    """The size of a file of the folder (`_rejects.jsonl`, the manifest), None when there is none (one HEAD for
    an object)."""
    if isinstance(path, RemoteFile):
        fs, key = storage.split(path.url)
        try:
            info = fs.get_file_info(key)
        except (pa.ArrowException, OSError) as exc:
            raise SetupError(f"cannot read {path}: {exc}") from None
        return info.size if info.type == pafs.FileType.File else None
    return path.stat().st_size if path.is_file() else None


def _present(directory: Location, names: list[str]) -> Callable[[str], bool]:
    """Which of the manifest's files exist: locally each is looked at; on a bucket one listing of the prefix
    answers for all of them (a LIST per 1000 objects, not a HEAD per shard)."""
    if isinstance(directory, RemoteFile):
        listed = storage.listing(directory.url) if names else {}
        return listed.__contains__
    return lambda name: (directory / name).is_file()


def _shard_names(directory: Location) -> list[str]:
    """The names of the `shard-*.arrow` files directly in a folder, sorted."""
    if isinstance(directory, RemoteFile):
        return sorted(n for n in storage.listing(directory.url, recursive=False) if fnmatch.fnmatchcase(n, _SHARD_GLOB))
    return sorted(path.name for path in directory.glob(_SHARD_GLOB))


def _manifest_text(path: Location) -> str | None:
    """A manifest's text, None when there is none. On a bucket a missing object and a missing bucket read alike
    (pyarrow says only "not found"), so the bucket is looked up, on that path only, to say which."""
    if not isinstance(path, RemoteFile):
        if not path.is_file():
            return None
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SetupError(f"{path} is not valid JSON: {exc}") from None
    try:
        data = storage.read_bytes(path.url)
    except FileNotFoundError:
        fs, key = storage.split(path.url)
        bucket = key.split("/", 1)[0]
        try:
            missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
        except (pa.ArrowException, OSError):
            missing = False
        if missing:
            raise SetupError(
                f"{path}: the bucket {bucket} does not exist (or these credentials cannot see it)"
            ) from None
        return None
    except (pa.ArrowException, OSError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SetupError(f"{path} is not valid JSON: {exc}") from None
