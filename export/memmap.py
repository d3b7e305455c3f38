"""`lossmask export --to numpy`: shards -> lossmask's own flat little-endian memmap files + `header.json`, and
the reader.

This layout is lossmask's, for readers written against `header.json`; no other project reads it as it is (the
trainers' own layouts are `--to olmo-core`, `--to datatrove`, `--to mds`, `--to megatron-bridge`). The files
(layout and meaning in `lossmask.schemas.exports.MEMMAP_ARRAYS`) hold the unshifted documents concatenated:

    tokens      = np.memmap("tokens.bin", dtype=header dtype)     all documents, unshifted
    loss_mask   = np.memmap("loss_mask.bin", dtype=np.uint8)      1 where tokens[j] is a counted target
    doc_offsets = np.memmap("doc_offsets.bin", dtype="<i8")       document k = tokens[doc_offsets[k]:doc_offsets[k+1]]

A reader takes any window `w = tokens[a : a + L + 1]`, reads `w[:-1]`, predicts `w[1:]`, and counts
`loss_mask[a + 1 : a + L + 1]`: a target never counts at a document start, so a window that spans two documents
never trains the jump between them (attention across them is the reader's choice; `doc_offsets` stop it).
`row_offsets` keeps the shard rows (and so any packing) so that `MemmapExport.row` gives back every shard row.

Written in one pass, one record batch in memory; `header.json` is written last, so a folder with a header is
complete.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from ..errors import SetupError
from ..files import file_sha256, finish, temp_path, write_json
from ..loader.shards import ShardSet
from ..schemas.exports import (
    MEMMAP_ARRAYS,
    MEMMAP_FORMAT,
    MEMMAP_HEADER_NAME,
    MEMMAP_VERSION,
    token_dtype,
)
from ..schemas.shards import MANIFEST_NAME
from .files import prepare_out, require_documents
from .unshift import POSITION_COLUMNS, unshift_batch

_DTYPES = {"loss_mask": "|u1", "doc_offsets": "<i8", "row_offsets": "<i8", "record_index": "<i8"}


def _record_index(batch: pa.RecordBatch) -> np.ndarray:
    """One input record index per document: the column itself, or its lists' values in the packed layout."""
    column = batch.column("record_index")
    if pa.types.is_list(column.type):
        return column.flatten().to_numpy()
    return column.to_numpy()


def export_memmap(shards: ShardSet, out: str | Path, verify: bool = True) -> dict[str, Any]:
    """Write the memmap export of `shards` to `out`; returns the header (also `out/header.json`)."""
    out = Path(out)
    require_documents(shards, "numpy")
    if verify:
        shards.verify()
    files = {name: spec[0] for name, spec in MEMMAP_ARRAYS.items()}
    prepare_out(out, shards.directory, lambda name: name in files.values() or name == MEMMAP_HEADER_NAME)
    dtypes = {**_DTYPES, "tokens": token_dtype(shards.vocab_size) if shards.vocab_size else "<u4"}
    limit = np.iinfo(np.dtype(dtypes["tokens"])).max
    counts = dict.fromkeys(files, 0)
    loss_tokens = 0
    with ExitStack() as stack:
        handles: dict[str, IO[bytes]] = {
            name: stack.enter_context(open(temp_path(out / file), "wb")) for name, file in files.items()
        }

        def put(name: str, values: np.ndarray) -> None:
            handles[name].write(np.ascontiguousarray(values, dtype=np.dtype(dtypes[name])).tobytes())
            counts[name] += int(values.size)

        put("doc_offsets", np.zeros(1))
        put("row_offsets", np.zeros(1))
        for index, batch in shards.iter_batches([*POSITION_COLUMNS, *_segment(shards), "record_index"]):
            try:
                unshifted = unshift_batch(batch)
            except ValueError as exc:
                raise SetupError(f"shard {shards.files[index].path}: {exc}") from None
            if unshifted.tokens.size and int(unshifted.tokens.max()) > limit:
                raise SetupError(
                    f"token id {int(unshifted.tokens.max())} does not fit {dtypes['tokens']}: "
                    f"the manifest's vocab_size {shards.vocab_size} is wrong"
                )
            records = _record_index(batch)
            if records.size != unshifted.doc_lengths.size:
                raise SetupError(f"shard {shards.files[index].path}: record_index does not list one per document")
            token_base, doc_base = counts["tokens"], counts["record_index"]
            put("tokens", unshifted.tokens)
            put("loss_mask", unshifted.counted)
            put("doc_offsets", unshifted.doc_offsets[1:] + token_base)
            put("row_offsets", unshifted.row_docs[1:] + doc_base)
            put("record_index", records)
            loss_tokens += int(np.count_nonzero(unshifted.counted))
    for file in files.values():
        finish(temp_path(out / file), out / file)
    header = {
        "format": MEMMAP_FORMAT,
        "version": MEMMAP_VERSION,
        "layout": shards.layout,
        "semantics": "tokens: unshifted documents, concatenated; loss_mask[j] = 1 when tokens[j] is a counted "
        "target, predicted from the tokens before it in its document (0 at every document start)",
        "counts": {
            "tokens": counts["tokens"],
            "loss_tokens": loss_tokens,
            "documents": counts["record_index"],
            "rows": counts["row_offsets"] - 1,
        },
        "arrays": {
            name: {
                "file": files[name],
                "dtype": dtypes[name],
                "count": counts[name],
                "doc": MEMMAP_ARRAYS[name][2],
                "sha256": file_sha256(out / files[name]),
            }
            for name in files
        },
        "vocab_size": shards.vocab_size,
        "source": {
            "shards": str(shards.directory),
            "manifest_sha256": file_sha256(shards.directory / MANIFEST_NAME),
        },
    }
    write_json(out / MEMMAP_HEADER_NAME, header)
    return header


def _segment(shards: ShardSet) -> list[str]:
    return ["segment_ids"] if shards.packed else []


class MemmapExport:
    """A memmap export opened read-only: the arrays of `header.json` as `np.memmap`s, and shard rows back.

    >>> data = MemmapExport("out/numpy")                    # doctest: +SKIP
    >>> tokens, mask = data.tokens, data.loss_mask          # doctest: +SKIP
    >>> data.row(0)["target_ids"]                           # doctest: +SKIP
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        header_path = self.directory / MEMMAP_HEADER_NAME
        if not header_path.is_file():
            raise SetupError(f"{self.directory} has no {MEMMAP_HEADER_NAME}: not a complete `--to numpy` export")
        self.header: dict[str, Any] = json.loads(header_path.read_text(encoding="utf-8"))
        if self.header.get("format") != MEMMAP_FORMAT or self.header.get("version") != MEMMAP_VERSION:
            raise SetupError(f"{header_path} is not a {MEMMAP_FORMAT} version {MEMMAP_VERSION} header")
        self.arrays = {name: self._map(spec) for name, spec in self.header["arrays"].items()}

    def _map(self, spec: dict[str, Any]) -> np.ndarray:
        path = self.directory / spec["file"]
        dtype = np.dtype(spec["dtype"])
        if path.stat().st_size != spec["count"] * dtype.itemsize:
            raise SetupError(f"{path} holds {path.stat().st_size} bytes, not {spec['count']} x {dtype}")
        if spec["count"] == 0:  # an empty file cannot be memory-mapped
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(spec["count"],))

    @property
    def tokens(self) -> np.ndarray:
        return self.arrays["tokens"]

    @property
    def loss_mask(self) -> np.ndarray:
        return self.arrays["loss_mask"]

    @property
    def doc_offsets(self) -> np.ndarray:
        return self.arrays["doc_offsets"]

    @property
    def row_offsets(self) -> np.ndarray:
        return self.arrays["row_offsets"]

    @property
    def num_documents(self) -> int:
        return int(self.doc_offsets.size - 1)

    @property
    def num_rows(self) -> int:
        return int(self.row_offsets.size - 1)

    def document(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, loss_mask) of document k, unshifted."""
        start, end = int(self.doc_offsets[k]), int(self.doc_offsets[k + 1])
        return self.tokens[start:end], self.loss_mask[start:end]

    def row(self, r: int) -> dict[str, np.ndarray]:
        """Shard row r, shifted again: input_ids, target_ids, loss_mask, position_ids, segment_ids."""
        pieces: dict[str, list[np.ndarray]] = {k: [] for k in (*POSITION_COLUMNS, "segment_ids")}
        for segment, k in enumerate(range(int(self.row_offsets[r]), int(self.row_offsets[r + 1]))):
            tokens, mask = self.document(k)
            pieces["input_ids"].append(tokens[:-1].astype(np.int32))
            pieces["target_ids"].append(tokens[1:].astype(np.int32))
            pieces["loss_mask"].append(mask[1:].astype(np.uint8))
            pieces["position_ids"].append(np.arange(tokens.size - 1, dtype=np.int32))
            pieces["segment_ids"].append(np.full(tokens.size - 1, segment, dtype=np.int32))
        return {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int32) for k, v in pieces.items()}
