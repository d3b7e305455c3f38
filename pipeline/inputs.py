"""A job's input records in order, each tagged with its file's format (and, with `datasets:`, its dataset), in
batches for the engines.

Reading (`read`) knows files; parsing (`formats`) knows records. A file's format is detected once, from its first
readable record, and every record of the file carries it, so that workers parse without looking again.

With several datasets, `InputPlan` decides which records of which dataset the job reads and in which order: the
eval split of each dataset (held out first, so no record is in both), each dataset's `sample` of the rest (whole
passes and a seeded subsample, in file order), and the interleaving of the datasets (each spread evenly over
the stream, by its share). Every choice is drawn from `seed` and the dataset's name, never from the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import SetupError
from ..schemas.records import RawRecord
from .config import PrepareConfig
from .formats import PREFERENCE_LAYOUTS, detect
from .formats.options import FormatOptions
from .hub import resolve_hub_dataset
from .read import (
    ARROW_SUFFIXES,
    PARQUET_SUFFIXES,
    _arrow_batches,
    _parquet_batches,
    decode,
    expand_inputs,
    input_kind,
    iter_file,
)

# Hugging Face `datasets` folders: `save_to_disk` writes state.json (its data files, in order) or, for a
# DatasetDict, dataset_dict.json and a folder per split; `load_dataset`-style folders name files by split.
SPLIT_NAMES = ("train", "validation", "valid", "test", "dev", "eval")


def resolve_inputs(patterns: list[str], split: str | None = None) -> list[Path]:
    """The files of a job's inputs: paths, globs and folders as `read.expand_inputs` reads them, except Hugging
    Face folders (`hf_folder_files`) and Hub datasets (`hf://datasets/org/name`, a folder once downloaded)."""
    expanded: list[str] = []
    for pattern in patterns:
        if pattern.startswith("hf://"):
            folder = resolve_hub_dataset(pattern)
            files = hf_folder_files(folder, split, any_kind=True)
            expanded.extend(map(str, files) if files is not None else [str(folder)])
        elif Path(pattern).is_dir() and (files := hf_folder_files(Path(pattern), split)) is not None:
            expanded.extend(map(str, files))
        else:
            expanded.append(pattern)
    return expand_inputs(expanded)


def hf_folder_files(folder: Path, split: str | None, any_kind: bool = False) -> list[Path] | None:
    """The data files of a Hugging Face folder, in order, or None for an ordinary folder. A `save_to_disk` folder
    gives the Arrow stream files its state.json lists; a DatasetDict's, those of split `split` (default train);
    a `load_dataset`-style folder of Parquet or Arrow files named by split (`data/train-00000-of-00002.parquet`,
    `train/0000.parquet`), those of `split`. `any_kind`: JSON files name splits too (a Hub snapshot)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        chosen = split or "train"
        if chosen not in splits:
            raise SetupError(f"{folder} holds the splits {', '.join(splits)}, not {chosen!r}: choose one with split:")
        return hf_folder_files(folder / chosen, None) or expand_inputs([str(folder / chosen)])
    if (folder / "state.json").is_file():
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / item["filename"] for item in state.get("_data_files", [])]
        if not files:
            raise SetupError(f"{folder}/state.json lists no data files: is it a datasets.save_to_disk folder?")
        return files
    suffixes = (*PARQUET_SUFFIXES, *ARROW_SUFFIXES)
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (p.suffix in suffixes or (any_kind and input_kind(p) is not None))
    )
    by_split = {p: _split_of(p.relative_to(folder)) for p in found}
    named = sorted({s for s in by_split.values() if s is not None})
    if not named:
        if split is not None:
            raise SetupError(f"split {split!r}: no file in {folder} is named by a split")
        return None
    chosen = split or "train"
    files = [p for p, s in by_split.items() if s == chosen]
    if not files:
        raise SetupError(f"{folder} holds the splits {', '.join(named)}, not {chosen!r}: choose one with split:")
    return files


def _split_of(relative: Path) -> str | None:
    for part in relative.parts:
        stem = part.lower()
        for name in SPLIT_NAMES:
            if stem == name or stem.startswith((f"{name}-", f"{name}.", f"{name}_")):
                return name
    return None


def iter_raw_records(
    paths: list[Path], forced_format: str | None, options: FormatOptions, skip: int = 0
) -> Iterator[RawRecord]:
    """All records of all inputs, in order, each tagged with its file's format (detected from its first record).
    The first `skip` records (done by a resumed run) are read but not yielded."""
    index = 0
    for path in paths:
        formats = FormatTracker(None, forced_format, options, str(path))
        for raw in iter_file(path, str(path), index, options.max_record_bytes):
            index += 1
            formats.tag(raw)
            if raw.source.index >= skip:
                yield raw


class FormatTracker:
    """Each file's format, detected from the file's first record that decodes, or forced by the job. The first
    file may have it already (`known`: a work unit that starts inside a file, after units that found it); each
    next file starts unknown. The one place that tags records with their format (`iter_raw_records`,
    `unit_writer.tagged_records`)."""

    def __init__(self, known: str | None, forced: str | None, options: FormatOptions, first_file: str):
        self.forced = forced
        self.format = forced or known
        self.file = first_file
        self.options = options

    def tag(self, raw: RawRecord) -> RawRecord:
        if raw.source.file != self.file:
            self.file, self.format = raw.source.file, self.forced
        if self.format is None and raw.error is None:
            probe = decode(RawRecord(raw.source, value=raw.value, line=raw.line))
            self.format = None if probe.error else detect(probe.value, self.options)
        raw.extra["format"] = self.format
        return raw


def first_format(path: Path, options: FormatOptions) -> str | None:
    """The format of a file, as `iter_raw_records` finds it: that of its first record that decodes and is known."""
    formats = FormatTracker(None, None, options, str(path))
    with closing(iter_file(path, str(path), 0, options.max_record_bytes)) as records:
        for raw in records:
            if formats.tag(raw).extra["format"] is not None:
                return formats.format
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


@dataclass
class Part:
    """What one dataset gives one part of the job (train or eval): `passes` whole passes over `pool` (a mask of
    the dataset's records; None = all of them), then the records of `extra`, each in file order."""

    passes: int = 1
    pool: np.ndarray | None = None
    extra: np.ndarray | None = None

    def size(self, available: int) -> int:
        pool = available if self.pool is None else int(self.pool.sum())
        return self.passes * pool + (0 if self.extra is None else int(self.extra.sum()))


@dataclass
class DatasetInput:
    """One dataset of the job: its entry's name, its files, how its records are read, and its parts."""

    name: str
    index: int | None  # its position in `config.datasets` (what records carry), None for the job's `inputs`
    paths: list[Path]
    format: str | None
    options: FormatOptions
    sample: float | int | None = None
    available: int | None = None  # records in its files, counted when a choice needs it
    parts: dict[str, Part] = field(default_factory=dict)

    def records(self, part: str) -> Iterator[RawRecord]:
        """The records of `part`, in order: passes over the pool, then the extra ones."""
        selection = self.parts[part]
        for _ in range(selection.passes):
            for raw in iter_raw_records(self.paths, self.format, self.options):
                if selection.pool is None or selection.pool[raw.source.index]:
                    yield raw
        if selection.extra is not None and selection.extra.any():
            for raw in iter_raw_records(self.paths, self.format, self.options):
                if selection.extra[raw.source.index]:
                    yield raw

    def summary(self, part: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "paths": [str(p) for p in self.paths]}
        if self.available is not None:
            out["available"] = self.available
        out["sampled"] = self.parts[part].size(self.available or 0) if self.available is not None else None
        if self.sample is not None and (part == "train" or "train" not in self.parts):  # eval: only its own
            out["sample"] = self.sample
        return out


def _rng(seed: int, *names: str) -> random.Random:
    """A generator for one choice, from the job's seed and what it chooses (never Python's hash)."""
    return random.Random(hashlib.blake2b(json.dumps([seed, *names]).encode(), digest_size=16).digest())


def _choose(rng: random.Random, pool: np.ndarray, count: int) -> np.ndarray:
    """A mask of `count` records chosen uniformly among those of `pool`."""
    candidates = np.flatnonzero(pool)
    chosen = np.zeros(len(pool), dtype=bool)
    chosen[candidates[sorted(rng.sample(range(len(candidates)), count))]] = True
    return chosen


def _rounded(value: float) -> int:
    return int(Fraction(value).limit_denominator(10**9) + Fraction(1, 2))


@dataclass
class InputPlan:
    """The job's datasets and which of their records each part (train, eval) reads, in which order."""

    config: PrepareConfig
    datasets: list[DatasetInput]
    eval_datasets: list[DatasetInput]
    eval_from_train: bool  # eval: {fraction} or {count}: held out of the train datasets

    @property
    def named(self) -> bool:
        """Whether the job was given `datasets:` (its records carry their dataset; rejects and manifest name it)."""
        return bool(self.config.datasets)

    @property
    def paths(self) -> list[Path]:
        seen: dict[Path, None] = {}
        for dataset in (*self.datasets, *self.eval_datasets):
            seen.update(dict.fromkeys(dataset.paths))
        return list(seen)

    @property
    def has_eval(self) -> bool:
        return self.eval_from_train or bool(self.eval_datasets)

    @classmethod
    def build(cls, config: PrepareConfig) -> InputPlan:
        datasets = (
            [_dataset(config, None)]
            if not config.datasets
            else [_dataset(config, i) for i in range(len(config.datasets))]
        )
        evaluation = config.eval or {}
        eval_config = (
            dataclasses.replace(config, inputs=[], datasets=evaluation["datasets"], eval=None)
            if ("datasets" in evaluation)
            else None
        )
        eval_datasets = (
            [] if eval_config is None else [_dataset(eval_config, i) for i in range(len(eval_config.datasets))]
        )
        plan = cls(config, datasets, eval_datasets, "fraction" in evaluation or "count" in evaluation)
        plan._choose()
        return plan

    def eval_config(self, config: PrepareConfig) -> PrepareConfig:
        """The config the eval part runs with: its own datasets when it has them, its output in OUT/eval."""
        out = str(Path(config.out) / "eval")
        if self.eval_datasets:
            datasets = config.eval["datasets"] if config.eval else []
            return dataclasses.replace(config, inputs=[], datasets=datasets, eval=None, out=out)
        return dataclasses.replace(config, eval=None, out=out)

    def part_datasets(self, part: str) -> list[DatasetInput]:
        """The datasets whose records `part` reads (an outcome's `dataset` indexes this list)."""
        return self.eval_datasets if part == "eval" and not self.eval_from_train else self.datasets

    def named_part(self, part: str) -> bool:
        """Whether the records of `part` carry their dataset (rejects then name it)."""
        return True if part == "eval" and not self.eval_from_train else self.named

    def manifest_datasets(
        self, part: str, accounting: list[dict[str, Any]], prints: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The manifest's `datasets`: per dataset its name, paths, fingerprint, records available, sampled, and
        read/written/rejected/dropped (by reason)."""
        sha256 = {item["path"]: item["sha256"] for item in prints["inputs"]}
        config = self.eval_config(self.config) if part == "eval" and self.eval_datasets else self.config
        out = []
        for dataset, counts in zip(self.part_datasets(part), accounting, strict=True):
            entry = None if dataset.index is None else config.datasets[dataset.index]
            summary = dataset.summary(part)
            summary["fingerprint"] = dataset_fingerprint(dataset, entry, sha256)
            summary.update({k: counts[k] for k in ("read", "written", "rejected", "dropped", "rows", "by_reason")})
            if summary["sampled"] is None:  # not counted beforehand (one dataset, every record once): all it read
                summary["sampled"] = counts["read"]
            out.append(summary)
        return out

    def _choose(self) -> None:
        seed = self.config.seed
        count_all = len(self.datasets) > 1 or self.eval_from_train
        for dataset in self.datasets:
            if count_all or dataset.sample is not None:
                dataset.available = count_records(dataset.paths, dataset.options)
        held = self._eval_counts()
        for dataset, eval_count in zip(self.datasets, held, strict=True):
            pool = None
            if dataset.available is not None and self.eval_from_train:
                everything = np.ones(dataset.available, dtype=bool)
                held_out = _choose(_rng(seed, "eval", dataset.name), everything, eval_count)
                dataset.parts["eval"] = Part(passes=0, extra=held_out)
                pool = ~held_out
            dataset.parts["train"] = _sampled(dataset, pool, seed, "train")
        for dataset in self.eval_datasets:
            if dataset.sample is not None:
                dataset.available = count_records(dataset.paths, dataset.options)
            dataset.parts["eval"] = _sampled(dataset, None, seed, "eval")

    def _eval_counts(self) -> list[int]:
        """Records each train dataset holds out for eval: `fraction` of each, or `count` shared out in proportion
        to their sizes (largest remainders, ties to the earlier dataset)."""
        evaluation = self.config.eval or {}
        sizes = [d.available or 0 for d in self.datasets]
        if "fraction" in evaluation:
            return [_rounded(evaluation["fraction"] * n) for n in sizes]
        if "count" not in evaluation:
            return [0] * len(sizes)
        count, total = evaluation["count"], sum(sizes)
        if count >= total:
            raise SetupError(f"eval.count {count} is not less than the {total} records of the datasets")
        shares = [Fraction(count * n, total) for n in sizes]
        counts = [int(s) for s in shares]
        order = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - counts[i]), i))
        for i in order[: count - sum(counts)]:
            counts[i] += 1
        return counts

    def single_stream(self, part: str) -> DatasetInput | None:
        """The one dataset `part` reads, when it reads every record of its files once, in file order (no
        `datasets:`, sample or held-out eval): its records are then the files' records, which work units can read
        apart (`jobs.units`)."""
        datasets = self.part_datasets(part)
        if len(datasets) != 1 or part != "train" or self.named_part(part):
            return None
        selection = datasets[0].parts[part]
        if selection.pool is not None or selection.passes != 1 or selection.extra is not None:
            return None
        return datasets[0]

    def records(self, part: str, skip: int = 0) -> Iterator[RawRecord]:
        """The records of `part` ("train" or "eval") in the job's order, numbered from 0; the first `skip` (done by
        a resumed run) are read but not yielded."""
        datasets = self.part_datasets(part)
        named = self.named_part(part)
        if (single := self.single_stream(part)) is not None:
            yield from iter_raw_records(single.paths, single.format, single.options, skip=skip)
            return
        streams = [(d, d.records(part), d.parts[part].size(d.available or 0)) for d in datasets]
        for index, (dataset, raw) in enumerate(_interleave(streams)):
            if index < skip:
                continue
            raw.source = dataclasses.replace(raw.source, index=index)
            if named:
                raw.extra["dataset"] = dataset.index
            yield raw


def count_records(paths: list[Path], options: FormatOptions) -> int:
    """How many records reading gives these files: a table's rows from its batches (no Python values made), the
    rest framed as reading frames them. A table that fails to read is counted by reading it (its error record)."""
    total = 0
    for path in paths:
        kind = input_kind(path)
        if kind in ("parquet", "arrow"):
            batches = _parquet_batches(path) if kind == "parquet" else _arrow_batches(path)
            try:
                total += sum(batch.num_rows for batch in batches)
                continue
            except (pa.ArrowException, OSError):
                pass
        total += sum(1 for _ in iter_file(path, str(path), 0, options.max_record_bytes))
    return total


def _sampled(dataset: DatasetInput, pool: np.ndarray | None, seed: int, part: str) -> Part:
    """A dataset's `sample` of `pool` (None = all its records): a fraction (up to 1) of them, or a count; a count
    above what the pool holds is whole passes and a seeded subsample of the rest."""
    if dataset.sample is None:
        return Part(passes=1, pool=pool)
    available = dataset.available or 0
    pool = np.ones(available, dtype=bool) if pool is None else pool
    size = int(pool.sum())
    want = _rounded(dataset.sample * size) if dataset.sample <= 1 else int(dataset.sample)
    if want and not size:
        raise SetupError(f"dataset {dataset.name!r} has no records to sample")
    passes, rest = divmod(want, size) if size else (0, 0)
    return Part(passes=passes, pool=pool, extra=_choose(_rng(seed, "sample", part, dataset.name), pool, rest))


def _interleave(
    streams: list[tuple[DatasetInput, Iterator[RawRecord], int]],
) -> Iterator[tuple[DatasetInput, RawRecord]]:
    """The datasets' records merged so that each is spread evenly over the stream by its share: the next record
    is the dataset's whose next record is due soonest, at (taken + 1) / total of it (ties: the earlier dataset).
    Deterministic, and a dataset of unknown size (one dataset alone) simply runs to its end."""
    if len(streams) == 1:
        dataset, records, _ = streams[0]
        for raw in records:
            yield dataset, raw
        return
    taken = [0] * len(streams)
    live = [i for i, (_, _, total) in enumerate(streams) if total > 0]
    scale = math.lcm(*(streams[i][2] for i in live)) if live else 1  # (taken + 1) / total as exact integers
    step = [scale // total if total else 0 for _, _, total in streams]
    while live:
        k = min(live, key=lambda i: ((taken[i] + 1) * step[i], i))
        dataset, records, total = streams[k]
        raw = next(records, None)
        if raw is None:  # pragma: no cover - the count and the reading agree
            raise SetupError(f"dataset {dataset.name!r} changed while it was read")
        taken[k] += 1
        yield dataset, raw
        if taken[k] == total:
            live.remove(k)


def _dataset(config: PrepareConfig, index: int | None) -> DatasetInput:
    """A dataset of `config` (its entry `index`, or the job's `inputs` for None), with its files resolved."""
    if index is None:
        return DatasetInput("inputs", None, resolve_inputs(config.inputs), config.format, config.format_options())
    entry = config.datasets[index]
    view = config.for_dataset(index)
    paths = resolve_inputs(entry["path"], entry.get("split"))
    return DatasetInput(entry["name"], index, paths, view.format, view.format_options(), entry.get("sample"))


def dataset_fingerprint(dataset: DatasetInput, entry: dict[str, Any] | None, sha256: dict[str, str]) -> str:
    """A dataset's fingerprint: its files' sha256 and its entry's options."""
    data = {"files": [[str(p), sha256[str(p)]] for p in dataset.paths], "entry": entry}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
