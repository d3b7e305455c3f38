"""A job's input records in order, each tagged with its file's format, in batches for the engines.

Reading (`read`) knows files; parsing (`formats`) knows records. A file's format is detected once, from its first
readable record, and every record of the file carries it, so that workers parse without looking again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from ..schemas.records import RawRecord
from .formats import detect
from .formats.options import FormatOptions
from .read import decode, iter_file


def iter_raw_records(
    paths: list[Path], forced_format: str | None, options: FormatOptions, skip: int = 0
) -> Iterator[RawRecord]:
    """All records of all inputs, in order, each tagged with its file's format (detected from its first record).
    The first `skip` records (done by a resumed run) are read but not yielded."""
    index = 0
    for path in paths:
        file_format = forced_format
        for raw in iter_file(path, str(path), index):
            index += 1
            if file_format is None and raw.error is None:
                probe = decode(RawRecord(raw.source, value=raw.value, line=raw.line))
                file_format = None if probe.error else detect(probe.value, options)
            raw.extra["format"] = file_format
            if raw.source.index >= skip:
                yield raw


def batched(items: Iterator[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    while batch := list(itertools.islice(items, size)):
        yield batch
