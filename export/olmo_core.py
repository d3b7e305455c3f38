"""`lossmask export --to olmo-core`: the numpy layout OLMo-core's `NumpyPaddedFSLDataset`, `NumpyPackedFSLDataset`
and `NumpyFSLDataset` read with `label_mask_paths`, as open-instruct's `open_instruct/numpy_dataset_conversion.py`
(called by `scripts/data/convert_sft_data_for_olmocore.py`) writes it for OLMo SFT:

    token_ids_part_0000.npy      raw little-endian token ids, no .npy header despite the name (OLMo-core opens
                                 them with np.memmap); the smallest unsigned dtype that holds vocab_size - 1
    labels_mask_part_0000.npy    raw bool, one per token: 1 where the token is a counted target
    token_ids_part_0000.csv.gz   "start,end" of every document in the part, one per line
    tokenizer/                   the tokenizer files `prepare` used
    dataset_statistics.json      counts, in open-instruct's keys, with where the export came from

The mask is aligned to the tokens, unshifted: OLMo-core builds labels as `input_ids` shifted left and drops the
targets whose mask is 0. So the mask is 0 at every document start, and a window that runs across two documents
(NumpyFSLDataset's fixed windows, or a packed instance) never trains the jump between them.

Unlike open-instruct, which cuts parts at exactly 1 GiB of tokens and clips the document that straddles the cut,
a part here ends before the document that would cross `max_part_bytes`, so every document is whole in one part
and listed once. Documents are written in shard order; packed shards become their documents in packing order,
and OLMo-core packs (or pads) them again from the .csv.gz boundaries. Written in one pass, one record batch in
memory; every file is renamed into place when complete, and `dataset_statistics.json` comes last.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import SetupError
from ..files import finish, temp_path, write_json
from ..loader.shards import ShardSet
from .files import prepare_out, require_documents
from .sidecar import file_entries, source_info
from .unshift import Unshifted, unshifted_batches

TOKENS_PART = "token_ids_part_{index:04d}.npy"
MASK_PART = "labels_mask_part_{index:04d}.npy"
BOUNDARIES_PART = "token_ids_part_{index:04d}.csv.gz"
STATISTICS_NAME = "dataset_statistics.json"
TOKENIZER_DIR = "tokenizer"
PART_BYTES = 1 << 30  # open-instruct's max_size_gb=1 per token part
BOUNDARIES_GZIP_LEVEL = 1
# The files a Hugging Face tokenizer folder may hold that matter for decoding and templates (never weights).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)


def olmo_token_dtype(vocab_size: int | None) -> np.dtype:
    """open-instruct's choice: the smallest of uint8/16/32/64 that holds every id below `vocab_size`."""
    if vocab_size is None:
        return np.dtype("<u4")
    for dtype in ("u1", "<u2", "<u4", "<u8"):
        if vocab_size - 1 <= np.iinfo(np.dtype(dtype)).max:
            return np.dtype(dtype)
    raise SetupError(f"vocab_size {vocab_size} is too large for any unsigned dtype")


def _owned(name: str) -> bool:
    return name == STATISTICS_NAME or (
        name.startswith(("token_ids_part_", "labels_mask_part_")) and name.endswith((".npy", ".csv.gz"))
    )


class _Parts:
    """The open part files; a new part begins whenever the next document would cross the byte limit."""

    def __init__(self, out: Path, dtype: np.dtype, max_items: int):
        self.out, self.dtype, self.max_items = out, dtype, max_items
        self.index = -1
        self.items = 0
        self.names: list[str] = []
        self.parts: list[dict[str, int]] = []
        self.handles: list[IO[bytes]] = []
        self.boundaries: gzip.GzipFile | None = None

    def _names(self, index: int) -> list[str]:
        return [pattern.format(index=index) for pattern in (TOKENS_PART, MASK_PART, BOUNDARIES_PART)]

    def _open_next(self) -> None:
        self.close()
        self.index += 1
        self.items = 0
        tokens, mask, boundaries = (self.out / name for name in self._names(self.index))
        # Open across calls (one part spans many record batches); `close` closes them.
        self.handles = [open(temp_path(path), "wb") for path in (tokens, mask, boundaries)]  # noqa: SIM115
        # mtime 0 and no file name in the gzip header: the same shards give the same bytes. Level 1, not
        # open-instruct's 9: OLMo-core decompresses any level, and level 9 took over half the CPU of the whole
        # export of a million short documents for a file of a few MB (level 1: about 20% larger, 3x faster).
        self.boundaries = gzip.GzipFile(
            filename="", mode="wb", fileobj=self.handles[2], mtime=0, compresslevel=BOUNDARIES_GZIP_LEVEL
        )
        self.parts.append({"tokens": 0, "documents": 0})

    def write(self, unshifted: Unshifted) -> None:
        """Every document of the batch, whole, in order."""
        offsets = unshifted.doc_offsets
        first = 0
        while first < offsets.size - 1:
            if self.index < 0 or self.items >= self.max_items:
                self._open_next()
            room = self.max_items - self.items
            # The most documents from `first` on that fit the room; a part takes at least one.
            last = int(np.searchsorted(offsets, offsets[first] + room, side="right")) - 1
            if last <= first:
                if self.items:
                    self._open_next()
                    continue
                last = first + 1
            a, b = int(offsets[first]), int(offsets[last])
            self.handles[0].write(np.ascontiguousarray(unshifted.tokens[a:b], dtype=self.dtype).tobytes())
            self.handles[1].write(unshifted.counted[a:b].astype(np.bool_).tobytes())
            starts = (offsets[first:last] - a + self.items).tolist()
            ends = (offsets[first + 1 : last + 1] - a + self.items).tolist()
            assert self.boundaries is not None
            self.boundaries.write("".join(f"{s},{e}\n" for s, e in zip(starts, ends, strict=True)).encode())
            self.items += b - a
            self.parts[-1]["tokens"] += b - a
            self.parts[-1]["documents"] += last - first
            first = last

    def close(self) -> None:
        if self.boundaries is None:
            return
        self.boundaries.close()
        for handle in self.handles:
            handle.close()
        for name in self._names(self.index):
            finish(temp_path(self.out / name), self.out / name)
            self.names.append(name)
        self.boundaries = None


def copy_tokenizer(shards: ShardSet, out: Path) -> str | None:
    """Copy the tokenizer files `prepare` used into `out/tokenizer/` (what open-instruct's conversion saves there);
    None when the manifest's tokenizer is not a local path here (a Hub id, or a folder moved away)."""
    source = shards.tokenizer_path
    if not source or not Path(source).exists():
        return None
    target = out / TOKENIZER_DIR
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    source_path = Path(source)
    files = [source_path] if source_path.is_file() else [source_path / n for n in TOKENIZER_FILES]
    for path in files:
        if path.is_file():
            shutil.copyfile(path, target / ("tokenizer.json" if source_path.is_file() else path.name))
    return source


def export_olmo_core(
    shards: ShardSet, out: str | Path, verify: bool = True, max_part_bytes: int = PART_BYTES
) -> dict[str, Any]:
    """Write the OLMo-core numpy export of `shards` to `out`; returns `dataset_statistics.json`'s contents."""
    out = Path(out)
    require_documents(shards, "olmo-core")
    if verify:
        shards.verify()
    prepare_out(out, shards.directory, _owned)
    dtype = olmo_token_dtype(shards.vocab_size)
    limit = np.iinfo(dtype).max
    parts = _Parts(out, dtype, max(1, max_part_bytes // dtype.itemsize))
    tokens = counted = documents = untrained = 0
    for index, unshifted in unshifted_batches(shards):
        if unshifted.tokens.size and int(unshifted.tokens.max()) > limit:
            raise SetupError(
                f"shard {shards.files[index].path}: token id {int(unshifted.tokens.max())} does not fit {dtype}: "
                f"the manifest's vocab_size {shards.vocab_size} is wrong"
            )
        parts.write(unshifted)
        tokens += int(unshifted.tokens.size)
        counted += int(np.count_nonzero(unshifted.counted))
        documents += int(unshifted.doc_lengths.size)
        per_doc = np.add.reduceat(unshifted.counted, unshifted.doc_offsets[:-1]) if unshifted.tokens.size else []
        untrained += int(np.count_nonzero(np.asarray(per_doc) == 0))
    parts.close()
    tokenizer = copy_tokenizer(shards, out)
    config = shards.manifest.get("config", {})
    statistics = {
        "output_directory": str(out),
        "configuration": {
            "tokenizer": config.get("tokenizer"),
            "max_sequence_length": config.get("max_length"),
            "chat_template": (shards.manifest.get("template") or {}).get("name") or config.get("chat_template"),
        },
        "per_dataset_statistics": [],
        "overall_statistics": {
            "total_datasets": 1,
            "total_instances": documents,
            "total_tokens": tokens,
            "trainable_tokens": counted,
            "trainable_percentage": counted / tokens * 100 if tokens else 0,
            "instances_filtered": untrained,
            "average_sequence_length": tokens / documents if documents else 0,
        },
        "lossmask": {
            "format": "olmo-core",
            "layout": shards.layout,
            "source": source_info(shards),
            "token_dtype": dtype.name,
            "tokenizer_copied": tokenizer is not None,
            "parts": [
                {**part, "files": file_entries(out, parts.names[3 * k : 3 * k + 3])}
                for k, part in enumerate(parts.parts)
            ],
        },
    }
    write_json(out / STATISTICS_NAME, statistics)
    return statistics
