"""Where bytes live: local paths, or objects behind a URL (`s3://bucket/key`, `gs://bucket/key`) read and written
through `pyarrow.fs`.

An input given as a URL becomes a `RemoteFile`: it has a `name` and `suffix` like a `Path` (so a file's kind is
told by its name alike), `str()` gives its URL (what records, rejects and the manifest call it), and it opens as
a stream (JSON, compressed or not) or as a random-access file (Parquet, Arrow). Globs (`*`, `?`, `[...]`, `**`)
are matched against the keys listed under the pattern's longest prefix without magic; a URL naming no object but
a prefix is a folder (every input file under it, sorted by key).

Configuration is the standard one of the AWS SDK that pyarrow embeds: `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`) for an S3-compatible server, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
`AWS_SESSION_TOKEN`, `AWS_PROFILE` and the credentials files, `AWS_REGION` / `AWS_DEFAULT_REGION`. Google Cloud
Storage uses its own default credentials (`gs://`, where pyarrow was built with it).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import SetupError

# Schemes handled here. `hf://` is not one of them: a Hub dataset is downloaded (pipeline/hub.py).
URL_SCHEMES = ("s3://", "gs://", "gcs://")
_CHUNK = 8 << 20


def is_url(text: str | object) -> bool:
    """Whether an input or `--out` names an object store (a URL of a scheme `pyarrow.fs` handles here)."""
    return isinstance(text, str | RemoteFile) and str(text).startswith(URL_SCHEMES)


def filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a URL's scheme and bucket (one per bucket and process), and the bucket."""
    scheme, _, rest = url.partition("://")
    bucket = rest.split("/", 1)[0]
    return _bucket_filesystem(scheme, bucket), bucket


@cache
def _bucket_filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    try:
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SetupError(f"cannot reach {scheme}://{bucket}: {exc}") from None
    return fs


def split(url: str) -> tuple[pafs.FileSystem, str]:
    """A URL's filesystem and its path there ("bucket/key")."""
    fs, bucket = filesystem(url)
    key = url.partition("://")[2].split("/", 1)[1] if "/" in url.partition("://")[2] else ""
    return fs, f"{bucket}/{key}".rstrip("/")


def join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


@dataclass(frozen=True, order=True)
class RemoteFile:
    """One object of an object store, used as reading uses a `Path`."""

    url: str

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:  # pragma: no cover - guards against handing it to open(): it is no local path
        raise TypeError(f"{self.url} is an object-store URL, not a local path")

    def __truediv__(self, name: str) -> RemoteFile:
        """The object `name` under this prefix, as `folder / name` names a file of a local folder: so a shard
        folder on a bucket (`loader.shards.ShardSet.directory`) is joined like a local one."""
        return RemoteFile(join(self.url, name))

    def resolve(self) -> RemoteFile:
        """Itself: a URL is absolute already. Code that compares resolved paths (an export's OUT against the shard
        folder it reads) takes a RemoteFile as it is, and it never equals a local path."""
        return self

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind(".") :] if "." in name else ""

    @cached_property
    def size(self) -> int:
        fs, path = split(self.url)
        return fs.get_file_info(path).size

    def open_stream(self) -> Any:
        """A sequential reader (a pyarrow NativeFile: `read(n)`, `tell()`, `close()`)."""
        fs, path = split(self.url)
        return fs.open_input_stream(path, compression=None)

    def open_random(self) -> Any:
        """A random-access reader, for Parquet footers and Arrow IPC files."""
        fs, path = split(self.url)
        return fs.open_input_file(path)


@contextlib.contextmanager
def reading(file: RemoteFile) -> Iterator[None]:
    """An object that cannot be read (gone since it was listed, no permission, the server unreachable) stops the
    job in one line, as a local input that cannot be opened does."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise SetupError(f"cannot read input {file.url}: {exc}") from None


def sha256(file: RemoteFile) -> str:
    """The sha256 of an object's bytes, streamed (never its ETag, which for a multipart upload is no digest of
    the content): so an input's fingerprint is the same for an object and for a local copy of it."""
    digest = hashlib.sha256()
    with file.open_stream() as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def expand(pattern: str, wanted: Any) -> list[RemoteFile]:
    """The objects a URL names: itself, the matches of its glob, or the objects under it as a folder, sorted by
    key; `wanted(file)` says which a folder or glob keeps (inputs of a known kind). Empty when none."""
    fs, path = split(pattern)
    scheme = pattern.partition("://")[0]
    if glob.has_magic(path):
        fixed = re.split(r"[*?\[]", path, maxsplit=1)[0]
        base = fixed.rsplit("/", 1)[0]
        infos = _listing(fs, base)
        regex = glob_regex(path)
        return [RemoteFile(f"{scheme}://{i.path}") for i in infos if regex.fullmatch(i.path)]
    try:
        info = fs.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise SetupError(f"cannot read {pattern}: {exc}") from None
    if info.type == pafs.FileType.File:
        return [RemoteFile(pattern)]
    files = [RemoteFile(f"{scheme}://{i.path}") for i in _listing(fs, path, hidden=True)]
    return [f for f in files if wanted(f)]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as `glob.glob(recursive=True)` reads it, over keys: `*` and `?` stay within one '/'-separated part,
    `**` crosses parts (and `**/` matches no part at all), `[...]` is a set."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _listing(fs: pafs.FileSystem, base: str, hidden: bool = False) -> list[pafs.FileInfo]:
    """The objects under `base`, sorted by key; names in a hidden part (`.x`) only with `hidden`. As for local
    inputs: a glob's `*` does not match hidden names (`glob.glob`), a folder gives every file (`rglob`)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except (pa.ArrowException, OSError) as exc:
        raise SetupError(f"cannot list {base}: {exc}") from None
    relative = len(base) + 1

    def visible(info: pafs.FileInfo) -> bool:
        if info.type != pafs.FileType.File:
            return False
        return hidden or not any(p.startswith(".") for p in info.path[relative:].split("/"))

    return sorted(filter(visible, infos), key=lambda i: i.path)


def listing(url: str, recursive: bool = True) -> dict[str, int]:
    """Every object under a URL (hidden ones too), as its key relative to the URL -> its size. Not `recursive`:
    only the objects directly under it (one delimited LIST, however many objects lie deeper)."""
    fs, path = split(url)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except (pa.ArrowException, OSError) as exc:
        raise SetupError(f"cannot list {url}: {exc}") from None
    return {i.path[len(path) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}


def read_bytes(url: str) -> bytes:
    fs, path = split(url)
    with fs.open_input_stream(path, compression=None) as stream:
        return stream.read()


def refuse_url(path: str, what: str) -> None:
    """Only `prepare` publishes to a bucket; every other command (export, train, the audit's HTML) writes a local
    folder or file. A URL given there would become a local folder named `s3:`: refused in one line instead."""
    if is_url(path):
        raise SetupError(f"{what} {path}: this writes local files only; write to a local folder, then copy it up")


def temp_key(path: str) -> str:
    """The hidden temporary key an object is uploaded under before it gets its name (`files.temp_path`'s)."""
    folder, _, name = path.rpartition("/")
    return f"{folder}/.{name}.tmp"


def put(local: Any, url: str) -> None:
    """Upload a local file as one object that appears under `url` only whole: uploaded under its temporary key,
    then moved (a server-side copy, atomic per object, and a delete). A failed upload can leave the temporary,
    never a partial object under `url`: a stream that fails midway is still closed by pyarrow, and closing an S3
    stream completes its upload with what it had."""
    with open(local, "rb") as source:
        _upload(url, iter(lambda: source.read(_CHUNK), b""))


def put_bytes(data: bytes, url: str) -> None:
    _upload(url, iter([data]))


def put_chunks(chunks: Iterator[bytes], url: str) -> None:
    """`put` for bytes made as they are uploaded (a file joined from parts): whole under `url`, or not at all."""
    _upload(url, chunks)


def chunks(url: str) -> Iterator[bytes]:
    """An object's bytes, streamed in chunks of bounded size."""
    fs, path = split(url)
    with fs.open_input_stream(path, compression=None) as stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


def _upload(url: str, chunks: Iterator[bytes]) -> None:
    fs, path = split(url)
    temp = temp_key(path)
    with fs.open_output_stream(temp, compression=None) as sink:
        for chunk in chunks:
            sink.write(chunk)
    fs.move(temp, path)


def delete(url: str) -> None:
    fs, path = split(url)
    fs.delete_file(path)
