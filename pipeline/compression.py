"""The decompressed bytes of an input file (gzip and zstd by suffix), read in bounded pieces, with the offset
where a truncated or corrupt archive broke.

A decompressor asked for `n` bytes returns at most `n`, so a decompression bomb costs the same memory as any
other file: only time, in proportion to what it inflates to. A cut archive must not pass for a short one:
gzip raises at the missing end-of-stream marker by itself; zstd's stream reader simply stops, so the frame
structure is followed alongside (`ZstdFrames`) and a stream that stops inside a frame raises like gzip does.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import IO

import zstandard

from ..storage import RemoteFile


class CorruptArchive(OSError):
    """A compressed file that is cut off or is not what its suffix says."""


# Every error that reading a (possibly compressed) file can raise for bad bytes, as opposed to a bug.
READ_ERRORS: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, zstandard.ZstdError)

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_TAIL = b"\x2a\x4d\x18"  # skippable frames: 0x184D2A50..0x184D2A5F, little-endian


class ZstdFrames:
    """Follows a zstd stream's frames from their headers and block sizes (RFC 8878), without decompressing, so
    that the end of the data can be told apart from a cut: `finish` raises when the bytes stop inside a frame."""

    def __init__(self) -> None:
        self.offset = 0  # compressed bytes seen
        self._header = b""  # the bytes of the header being read
        self._need = 4  # bytes the next header has
        self._state = "magic"
        self._skip = 0  # content bytes to pass over before the next header
        self._checksum = False  # whether the current frame ends with a 4-byte checksum
        # Where bytes that are no zstd stopped the stream (`error_at`, a compressed offset), and why.
        self.error: CorruptArchive | None = None
        self.error_at = 0

    def feed(self, data: bytes) -> None:
        """Follow `data`; bytes that are no zstd set `error` (and `error_at`), and nothing after them is read."""
        if self.error is not None:
            return
        position, end = 0, len(data)
        while position < end:
            if self._skip:
                taken = min(self._skip, end - position)
                self._skip -= taken
                position += taken
                continue
            taken = min(self._need - len(self._header), end - position)
            self._header += data[position : position + taken]
            position += taken
            if len(self._header) == self._need:
                header, self._header = self._header, b""
                at = self.offset + position - len(header)
                try:
                    self._parse(header, at)
                except CorruptArchive as exc:
                    self.error, self.error_at = exc, at
                    self.offset = at
                    return
        self.offset += end

    def vouched(self) -> int:
        """Compressed bytes known to be zstd so far: all fed, but a frame header being read after a frame's end
        (it may turn out to be no frame) or anything from where bytes stopped being zstd."""
        if self.error is not None:
            return self.error_at
        return self.offset - (len(self._header) if self._state == "magic" else 0)

    def finish(self) -> None:
        """Raise CorruptArchive when the stream stopped at bytes that are no zstd, or anywhere but between two
        frames."""
        if self.error is not None:
            raise self.error
        if self._state != "magic" or self._header or self._skip:
            raise CorruptArchive("the zstd data ends inside a frame (the file is cut off)")

    def _parse(self, header: bytes, at: int) -> None:
        if self._state == "magic":
            if header == _ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif header[1:] == _SKIPPABLE_TAIL and header[0] & 0xF0 == 0x50:
                self._state, self._need = "skippable", 4
            else:
                raise CorruptArchive(f"no zstd frame starts at compressed byte {at}")
        elif self._state == "descriptor":
            descriptor = header[0]
            single_segment = bool(descriptor & 0x20)
            self._checksum = bool(descriptor & 0x04)
            content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 0x03] + content_size
            self._state, self._need = ("frame_header", rest) if rest else ("block", 3)
        elif self._state == "frame_header":
            self._state, self._need = "block", 3
        elif self._state == "block":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise CorruptArchive(f"a zstd block of reserved type at compressed byte {at}")
            self._skip = 1 if kind == 1 else size  # RLE blocks hold one byte, repeated `size` times
            if last:
                self._state, self._need = ("checksum", 4) if self._checksum else ("magic", 4)
        elif self._state == "checksum":
            self._state, self._need = "magic", 4
        else:  # skippable: its size, then that many bytes of anything
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = "magic", 4


class _TrackedSource:
    """A file object that shows every byte it hands the zstd decompressor to a `ZstdFrames`, and hands it only
    bytes the frames vouch for: never the start of a header not yet known to be one (which may begin in one
    read and end in the next), and nothing from where bytes stop being zstd. Given one stray byte, the
    decompressor raises and drops the records it decompressed in the same call; given none, it hands out
    everything before them, and `DecompressedStream.read` raises the error after."""

    def __init__(self, raw: IO[bytes], frames: ZstdFrames):
        self._raw = raw
        self._frames = frames
        self._pending = b""  # read and fed, not yet handed out
        self._given = 0  # compressed bytes handed out
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        frames = self._frames
        while frames.vouched() <= self._given and frames.error is None and not self._eof:
            data = self._raw.read(size)
            self._eof = not data
            frames.feed(data)
            self._pending += data
        take = max(0, frames.vouched() - self._given)
        out, self._pending = self._pending[:take], self._pending[take:]
        self._given += len(out)
        return out


class DecompressedStream:
    """`read(n)` of a file's decompressed bytes; `where()` says where the reading is, for an error's detail."""

    def __init__(self, path: Path | RemoteFile):
        name = path.name.lower()
        # An object-store input is a pyarrow stream (read, tell, close), as a local file is a file object.
        self._raw: IO[bytes] = path.open_stream() if isinstance(path, RemoteFile) else open(path, "rb")  # noqa: SIM115
        self._frames: ZstdFrames | None = None
        self._stream: IO[bytes] | zstandard.ZstdDecompressionReader
        self.position = 0  # decompressed bytes handed out
        if name.endswith(".gz"):
            self._stream = gzip.GzipFile(fileobj=self._raw)
        elif name.endswith((".zst", ".zstd")):
            self._frames = ZstdFrames()
            self._stream = zstandard.ZstdDecompressor().stream_reader(
                _TrackedSource(self._raw, self._frames), read_across_frames=True, closefd=False
            )
        else:
            self._stream = self._raw
        self.compressed = self._stream is not self._raw

    def read(self, size: int) -> bytes:
        """At most `size` bytes; b"" at the end. What was decompressed before an error comes out before it."""
        data = self._stream.read1(size) if isinstance(self._stream, gzip.GzipFile) else self._stream.read(size)
        if not data and self._frames is not None:
            self._frames.finish()
        self.position += len(data)
        return data

    def where(self) -> str:
        """How far the reading got, for an error's detail."""
        if not self.compressed:
            return f"after byte {self.position}"
        offset = self._frames.offset if self._frames is not None else self._raw.tell()
        return f"after decompressed byte {self.position} (compressed byte {offset})"

    def close(self) -> None:
        try:
            if self._stream is not self._raw:
                self._stream.close()
        finally:
            self._raw.close()

    def __enter__(self) -> DecompressedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
