"""`lossmask export --to mds`: a MosaicML Streaming dataset (`index.json` + `shard.00000.mds`, ...) of llm-foundry's
pre-tokenized finetuning samples, read by `streaming.StreamingDataset` and llm-foundry's
`StreamingFinetuningDataset` (`llmfoundry/data/finetuning/tasks.py`).

Each document is one sample with one column, `turns` (MDS encoding `json`): a list of
`{"input_ids": [...], "labels": [...]}`, llm-foundry's "latest format". llm-foundry's collator
(`stitch_turns_decoder_only`) concatenates each turn's `input_ids` then `labels`, and with
`target_prompts: none` and `target_responses: all` trains exactly the `labels` tokens. So a document becomes
its runs of tokens: each turn is a run of untrained tokens (`input_ids`) and the run of counted targets after
it (`labels`). Two cases have no place in that format and are counted in `_export.json`:

- the untrained tokens after a document's last counted target (a template's newline after its end-of-turn
  token) are left out: nothing in the document is predicted from them, so no loss changes;
- a document with no counted target is left out (llm-foundry refuses such samples).

Bytes as `streaming.MDSWriter(columns={"turns": "json"}, out=OUT)` writes them (`streaming/base/format/mds/`):
a shard is `uint32 n`, `uint32 offsets[n + 1]` (from the file start), the shard's JSON config, then the samples,
each `uint32 size` + the JSON text; a new shard begins before the one that would pass 64 MiB (`size_limit`);
`index.json` lists the shards and is written last. A packed shard becomes its documents in packing order:
llm-foundry packs again itself (`packing_ratio`), keeping documents apart with `sequence_id`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..files import finish, temp_path
from ..loader.shards import ShardSet
from ..schemas.exports import EXPORT_INFO_NAME
from .files import prepare_out, require_documents
from .sidecar import write_export_info
from .unshift import Unshifted, unshifted_batches

INDEX_NAME = "index.json"
SHARD_PATTERN = "shard.{index:05d}.mds"
SIZE_LIMIT = 1 << 26  # MDSWriter's default size_limit
COLUMNS = {"turns": "json"}
_OWNED = re.compile(r"shard\.\d{5}\.mds")


def shard_config(size_limit: int = SIZE_LIMIT) -> dict[str, Any]:
    """The writer configuration MDS stores in every shard and in `index.json` (columns sorted by name)."""
    names = sorted(COLUMNS)
    return {
        "column_encodings": [COLUMNS[name] for name in names],
        "column_names": names,
        "column_sizes": [None] * len(names),  # json is variable-size
        "compression": None,
        "format": "mds",
        "hashes": [],
        "size_limit": size_limit,
        "version": 2,
    }


Turns = list[dict[str, list[int]]]


def batch_turns(tokens: np.ndarray, counted: np.ndarray, doc_offsets: np.ndarray) -> tuple[list[Turns], np.ndarray]:
    """The turns of every document `doc_offsets` cuts from the flat `tokens`/`counted`: (untrained run, counted
    run) pairs up to each document's last counted target ([] for a document with none), and where each document's
    kept tokens end. The runs are found for the whole batch at once; only the slicing is per document (a million
    short documents spent most of the export in per-document NumPy calls before)."""
    starts = doc_offsets[:-1]
    if starts.size == 0:
        return [], np.zeros(0, dtype=np.int64)
    where_counted = np.where(counted != 0, np.arange(counted.size), -1)
    last = np.maximum.reduceat(where_counted, starts)  # every document has >= 2 tokens (unshift)
    kept_end = np.where(last >= starts, last + 1, starts)  # == start: nothing counted, nothing kept
    changes = np.flatnonzero(np.diff(counted.astype(np.int8))) + 1  # where a run begins, over the batch
    first = np.searchsorted(changes, starts, side="right").tolist()  # a change at a document start is no bound
    stop = np.searchsorted(changes, kept_end, side="left").tolist()
    values, cuts = tokens.tolist(), changes.tolist()
    turns: list[Turns] = []
    for d, (start, end) in enumerate(zip(starts.tolist(), kept_end.tolist(), strict=True)):
        if end == start:
            turns.append([])
            continue
        bounds = [start, *cuts[first[d] : stop[d]], end]  # counted[start] is 0: untrained, counted, ...
        turns.append(
            [
                {"input_ids": values[bounds[k] : bounds[k + 1]], "labels": values[bounds[k + 1] : bounds[k + 2]]}
                for k in range(0, len(bounds) - 2, 2)
            ]
        )
    return turns, kept_end


def document_turns(tokens: np.ndarray, counted: np.ndarray) -> Turns:
    """The turns of one document: (untrained run, counted run) pairs, up to its last counted target."""
    return batch_turns(tokens, counted, np.array([0, tokens.size], dtype=np.int64))[0][0]


def encode_sample(turns: list[dict[str, list[int]]]) -> bytes:
    """One MDS sample of the `turns` column: its size (uint32) and its JSON text (`json.dumps` defaults)."""
    data = json.dumps(turns).encode("utf-8")
    return np.uint32(len(data)).tobytes() + data


class _ShardWriter:
    """Samples of the shard being filled, in memory (at most `size_limit` bytes), flushed whole."""

    def __init__(self, out: Path, size_limit: int):
        self.out = out
        self.size_limit = size_limit
        self.config = shard_config(size_limit)
        self.config_data = json.dumps(self.config, sort_keys=True).encode("utf-8")
        self.samples: list[bytes] = []
        self.size = 0
        self.shards: list[dict[str, Any]] = []

    def _empty_size(self) -> int:
        return 4 + 4 + len(self.config_data)  # MDSWriter's extra_bytes_per_shard

    def add(self, sample: bytes) -> None:
        if not self.samples:
            self.size = self._empty_size()
        if self.samples and self.size_limit < self.size + len(sample) + 4:  # 4: the sample's offset
            self.flush()
            self.size = self._empty_size()
        self.samples.append(sample)
        self.size += len(sample) + 4

    def flush(self) -> None:
        if not self.samples:
            return
        name = SHARD_PATTERN.format(index=len(self.shards))
        count = len(self.samples)
        offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum([len(s) for s in self.samples], out=offsets[1:])
        offsets += 4 + 4 * (count + 1) + len(self.config_data)
        temp = temp_path(self.out / name)
        with open(temp, "wb") as handle:
            handle.write(np.uint32(count).tobytes())
            handle.write(offsets.astype("<u4").tobytes())
            handle.write(self.config_data)
            for sample in self.samples:
                handle.write(sample)
        finish(temp, self.out / name)
        raw = {"basename": name, "bytes": (self.out / name).stat().st_size, "hashes": {}}
        self.shards.append({"samples": count, "raw_data": raw, "zip_data": None, **self.config})
        self.samples = []

    def write_index(self) -> None:
        self.flush()
        temp = temp_path(self.out / INDEX_NAME)
        temp.write_text(json.dumps({"version": 2, "shards": self.shards}, sort_keys=True), encoding="utf-8")
        finish(temp, self.out / INDEX_NAME)


def _add_documents(writer: _ShardWriter, unshifted: Unshifted, counts: dict[str, int]) -> None:
    offsets = unshifted.doc_offsets
    turns, kept_end = batch_turns(unshifted.tokens, unshifted.counted, offsets)
    starts, ends = offsets[:-1], offsets[1:]
    has_target = kept_end > starts
    counts["documents"] += int(np.count_nonzero(has_target))
    counts["documents_without_targets"] += int(np.count_nonzero(~has_target))
    counts["tokens"] += int(np.sum(kept_end - starts))
    counts["loss_tokens"] += int(np.count_nonzero(unshifted.counted))  # all before each kept end
    counts["trailing_untrained_tokens_left_out"] += int(np.sum((ends - kept_end)[has_target]))
    for document in turns:
        if document:
            writer.add(encode_sample(document))


def export_mds(shards: ShardSet, out: str | Path, verify: bool = True, size_limit: int = SIZE_LIMIT) -> dict[str, Any]:
    """Write the MDS export of `shards` to `out`; returns what `_export.json` records."""
    out = Path(out)
    require_documents(shards, "mds")
    if verify:
        shards.verify()
    prepare_out(
        out, shards.directory, lambda name: bool(_OWNED.fullmatch(name)) or name in (INDEX_NAME, EXPORT_INFO_NAME)
    )
    writer = _ShardWriter(out, size_limit)
    counts = dict.fromkeys(
        ("documents", "tokens", "loss_tokens", "documents_without_targets", "trailing_untrained_tokens_left_out"), 0
    )
    for _, unshifted in unshifted_batches(shards):
        _add_documents(writer, unshifted, counts)
    writer.write_index()
    names = [shard["raw_data"]["basename"] for shard in writer.shards] + [INDEX_NAME]
    return write_export_info(out, "mds", shards, names, columns=COLUMNS, **counts)
