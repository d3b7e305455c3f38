"""`lossmask export --to datatrove`: the tokenized files of datatrove's `DocumentTokenizer` / merger, which
datatrove's `DatatroveFolderDataset` and nanotron (its `TokenizedBytesFolderDataset` builds on it) read.

One file set per shard, `00000_lossmask.ds` and so on (the layout of datatrove's per-rank files
`{rank:05d}_{name}.ds`), as datatrove's `TokenizedFile` writes it (`src/datatrove/pipeline/tokens/tokenizer.py`):

    NAME.ds           token ids, little-endian uint16 (vocabularies up to 65536) or uint32, documents concatenated
    NAME.ds.index     uint64 little-endian: the end of every document in the file, in tokens (cumulative)
    NAME.ds.loss      1 byte per token, 1 where the token is a counted target (0 at every document start)
    NAME.ds.metadata  "TOKENIZER|TOKEN_SIZE", the token count, and that count in SI units, on three lines

The tokens are the unshifted documents; `.ds.loss` marks tokens as the targets whose loss counts, which is what
datatrove writes from a document's `no_loss_ranges`. `DatatroveFolderDataset` reads windows of `seq_len + 1`
tokens across document ends and, with `return_positions=True`, positions that restart at every `.ds.index` end,
so attention and positions stay within documents; it does not read `.ds.loss` (datatrove 0.10.1, nanotron as
of mid-2026 do not either): a trainer that should weight the loss reads it beside the tokens, as datatrove's own
merger does. A packed shard becomes its documents in packing order. The provenance that these files have no
place for is in `_export.json`.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import SetupError
from ..files import finish, temp_path
from ..loader.shards import ShardSet
from ..schemas.exports import EXPORT_INFO_NAME, token_dtype
from .files import prepare_out, require_documents
from .sidecar import write_export_info
from .unshift import unshifted_batches

FILE_PATTERN = "{index:05d}_lossmask.ds"
SUFFIXES = ("", ".index", ".loss", ".metadata")
_OWNED = re.compile(r"\d{5}_lossmask\.ds(\.index|\.loss|\.metadata)?")
_SI_PREFIXES = "kMGTPEZYRQ"


def si_token_count(count: int) -> str:
    """A token count with three significant digits and an SI prefix, as the third line of datatrove's
    `.ds.metadata` shows it ("1.23 MT" for 1,234,567 tokens; the format of `humanize.metric(count, unit="T")`)."""
    if count == 0:
        return "0.00 T"
    exponent = len(str(count)) - 1
    digits = max(0, 2 - exponent % 3)
    if round(count / 10 ** (exponent // 3 * 3), digits) >= 10 ** (exponent % 3 + 1):  # 999.6 k -> 1.00 M
        exponent += 1
        digits = max(0, 2 - exponent % 3)
    bucket = exponent // 3 * 3
    prefix = _SI_PREFIXES[bucket // 3 - 1] if bucket else ""
    return f"{count / 10**bucket:.{digits}f} {prefix}T"


def metadata_text(tokenizer: str, token_size: int, count: int) -> str:
    """The `.ds.metadata` file: tokenizer name and token size, token count, readable count (no final newline)."""
    if "|" in tokenizer:
        raise SetupError(f"tokenizer name {tokenizer!r} has a '|', which .ds.metadata uses as its separator")
    return "\n".join([f"{tokenizer}|{token_size}", str(count), si_token_count(count)])


def export_datatrove(shards: ShardSet, out: str | Path, verify: bool = True) -> dict[str, Any]:
    """Write the datatrove export of `shards` to `out`; returns what `_export.json` records."""
    out = Path(out)
    require_documents(shards, "datatrove")
    if verify:
        shards.verify()
    prepare_out(out, shards.directory, lambda name: bool(_OWNED.fullmatch(name)) or name == EXPORT_INFO_NAME)
    dtype = np.dtype(token_dtype(shards.vocab_size) if shards.vocab_size else "<u4")
    limit = np.iinfo(dtype).max
    tokenizer = shards.tokenizer_path or "Unknown Tokenizer"
    written: list[str] = []
    per_file: list[dict[str, int]] = []
    with ExitStack() as stack:
        handles: dict[str, IO[bytes]] = {}
        current = -1
        ends = 0

        def close_file() -> None:
            name = FILE_PATTERN.format(index=current)
            for handle in handles.values():
                handle.close()
            text = metadata_text(tokenizer, dtype.itemsize, ends)
            temp_path(out / f"{name}.metadata").write_text(text, encoding="utf-8")
            for suffix in SUFFIXES:
                finish(temp_path(out / f"{name}{suffix}"), out / f"{name}{suffix}")
                written.append(f"{name}{suffix}")

        for index, unshifted in unshifted_batches(shards):
            if index != current:
                if current >= 0:
                    close_file()
                current, ends = index, 0
                name = FILE_PATTERN.format(index=index)
                handles = {
                    suffix: stack.enter_context(open(temp_path(out / f"{name}{suffix}"), "wb"))
                    for suffix in SUFFIXES[:3]
                }
                per_file.append({"tokens": 0, "documents": 0, "loss_tokens": 0})
            if unshifted.tokens.size and int(unshifted.tokens.max()) > limit:
                raise SetupError(
                    f"shard {shards.files[index].path}: token id {int(unshifted.tokens.max())} does not fit "
                    f"{dtype}: the manifest's vocab_size {shards.vocab_size} is wrong"
                )
            handles[""].write(np.ascontiguousarray(unshifted.tokens, dtype=dtype).tobytes())
            handles[".index"].write((unshifted.doc_offsets[1:] + ends).astype("<u8").tobytes())
            handles[".loss"].write(unshifted.counted.astype(np.uint8).tobytes())
            ends += int(unshifted.tokens.size)
            per_file[-1]["tokens"] += int(unshifted.tokens.size)
            per_file[-1]["documents"] += int(unshifted.doc_lengths.size)
            per_file[-1]["loss_tokens"] += int(np.count_nonzero(unshifted.counted))
        if current >= 0:
            close_file()
    return write_export_info(
        out,
        "datatrove",
        shards,
        written,
        token_size=dtype.itemsize,
        tokenizer=tokenizer,
        tokens=sum(f["tokens"] for f in per_file),
        documents=sum(f["documents"] for f in per_file),
        loss_tokens=sum(f["loss_tokens"] for f in per_file),
        per_file=per_file,
    )
