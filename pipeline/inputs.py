"""A job's input records in order, each tagged with its file's format, in batches for the engines.

Reading (`read`) knows files; parsing (`formats`) knows records. A file's format is detected once, from its first
readable record, and every record of the file carries it, so that workers parse without looking again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from ..errors import SetupError
from ..schemas.records import RawRecord
from .formats import PREFERENCE_LAYOUTS, detect
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
        for raw in iter_file(path, str(path), index, options.max_record_bytes):
            index += 1
            if file_format is None and raw.error is None:
                probe = decode(RawRecord(raw.source, value=raw.value, line=raw.line))
                file_format = None if probe.error else detect(probe.value, options)
            raw.extra["format"] = file_format
            if raw.source.index >= skip:
                yield raw


def first_format(path: Path, options: FormatOptions) -> str | None:
    """The format of a file, as `iter_raw_records` finds it: that of its first record that decodes and is known."""
    with closing(iter_file(path, str(path), 0, options.max_record_bytes)) as records:
        for raw in records:
            if raw.error is None:
                probe = decode(RawRecord(raw.source, value=raw.value, line=raw.line))
                found = None if probe.error else detect(probe.value, options)
                if found is not None:
                    return found
    return None


def job_format(paths: list[Path], forced: str | None, options: FormatOptions) -> str | None:
    """The format the whole job reads: `forced`, else the preference format of its files, else None (each file
    keeps its own format).

    Preference data makes rows of a layout of its own (`formats.PREFERENCE_LAYOUTS`), so a job is a preference
    job when its files hold preference data, and they must all hold the same kind: a job that mixes pairs, KTO
    examples and SFT data has no one layout to write, and is refused before anything is read.
    """
    if forced is not None:
        return forced
    found = {path: first_format(path, options) for path in paths}
    kinds = sorted({fmt for fmt in found.values() if fmt in PREFERENCE_LAYOUTS})
    if not kinds:
        return None
    others = {path: fmt for path, fmt in found.items() if fmt is not None and fmt != kinds[0]}
    if others:
        first = next(path for path, fmt in found.items() if fmt == kinds[0])
        other, fmt = next(iter(others.items()))
        raise SetupError(
            f"{first} holds {kinds[0]} data and {other} {fmt} data: a job writes one layout; prepare them apart"
        )
    return kinds[0]


# A batch closes at this many bytes of records too, so that batches of large records (each up to
# max_record_bytes) do not multiply the memory in flight by the batch size.
BATCH_BYTES = 64 << 20


def batched(items: Iterator[RawRecord], size: int, max_bytes: int = BATCH_BYTES) -> Iterator[list[RawRecord]]:
    """Batches of `size` records, or fewer when they hold `max_bytes` (undecoded lines, or table rows as Arrow
    measured them); at least one record each."""
    batch: list[RawRecord] = []
    held = 0
    for item in items:
        batch.append(item)
        held += len(item.line) if item.line is not None else item.extra.get("bytes", 0)
        if len(batch) >= size or held >= max_bytes:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch
