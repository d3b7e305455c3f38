"""`lossmask inspect`: a shard folder in readable form: the manifest (config, fingerprints, counts by reason),
the schema with each column's meaning, and a few rows decoded with the counted targets marked.

Plain text, a list of lines per section, so the command prints it and tests read it. A counted run of tokens is
shown between ⟦ ⟧ (or in color on a terminal): those are the tokens the loss is taken on, each predicted from
everything before it in its document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click
import numpy as np
import pyarrow as pa

from ..pipeline.tokenizer import TokenizerInfo
from ..schemas.shards import RowFlag
from .unshift import unshift_batch

OPEN, CLOSE = "⟦", "⟧"


def _short(digest: str | None) -> str:
    return "-" if not digest else digest[:12]


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def describe_manifest(manifest: dict[str, Any], directory: str, checked: bool | None = None) -> list[str]:
    """Summary, accounting, config, fingerprints, tokenizer/template facts and the shard list."""
    totals = manifest.get("totals", {})
    records = manifest.get("records", {})
    lines = [
        f"shards      {directory}  (layout {manifest.get('layout', 'rows')}, schema version "
        f"{manifest.get('schema_version')}, lossmask {manifest.get('lossmask_version', '?')})",
        f"totals      {totals.get('rows', 0)} rows, {totals.get('tokens', 0)} positions, "
        f"{totals.get('loss_tokens', 0)} counted targets "
        f"({_percent(totals.get('loss_tokens', 0), totals.get('tokens', 0))})",
        f"records     {records.get('read', 0)} read = {records.get('written', 0)} written + "
        f"{records.get('rejected', 0)} rejected + {records.get('dropped', 0)} dropped",
    ]
    for status in ("rejected", "dropped"):
        for reason, count in sorted(records.get("by_reason", {}).get(status, {}).items()):
            lines.append(f"            {count:>7} {status}: {reason}")
    for title, counts in (("rows dropped", records.get("rows_dropped", {})), ("row flags", records.get("row_flags"))):
        if counts:
            lines.append(f"{title:<12}" + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())))

    lines += ["", "config"]
    for key, value in sorted(manifest.get("config", {}).items()):
        lines.append(f"  {key:<28} {_value(value)}")

    fingerprints = manifest.get("fingerprints", {})
    lines += ["", "fingerprints"]
    tokenizer = fingerprints.get("tokenizer") or {}
    lines.append(f"  tokenizer  {tokenizer.get('path', '-')}  sha256 {_short(tokenizer.get('sha256'))}")
    template = fingerprints.get("template")
    if template:
        lines.append(f"  template   {template.get('name')}  sha256 {_short(template.get('sha256'))}")
    for item in fingerprints.get("inputs", []):
        lines.append(f"  input      {item.get('path')}  {item.get('bytes')} bytes  sha256 {_short(item.get('sha256'))}")

    info = manifest.get("tokenizer") or {}
    if info:
        special = " ".join(f"{k}={v}" for k, v in sorted(info.get("special_tokens", {}).items())) or "-"
        lines += ["", f"tokenizer   vocab {info.get('vocab_size')}, special tokens {special}"]
    template_info = manifest.get("template")
    if template_info:
        markers = ", ".join(template_info.get("end_of_turn_markers", [])) or "-"
        lines.append(
            f"template    {template_info.get('name')}: content {template_info.get('content_format')}, "
            f"end of turn {markers}, generation tags {template_info.get('has_generation_tags')}"
        )

    lines += ["", "shard files" + ("  (sha256 checked)" if checked else "")]
    for shard in manifest.get("shards", []):
        lines.append(
            f"  {shard.get('file')}  {shard.get('rows')} rows  {shard.get('tokens')} positions  "
            f"{shard.get('loss_tokens')} counted  {shard.get('bytes')} bytes  sha256 {_short(shard.get('sha256'))}"
        )
    return lines


def _value(value: Any) -> str:
    if isinstance(value, str) and (value != value.strip() or not value.isprintable()):
        return repr(value)
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "[]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) if value else "{}"
    return "-" if value is None else str(value)


def describe_schema(schema: pa.Schema, layout: str) -> list[str]:
    """Each column: name, Arrow type, and the meaning stored with it in the shard file."""
    lines = [f"schema ({layout} layout)"]
    width = max((len(f.name) for f in schema), default=0)
    for field in schema:
        doc = (field.metadata or {}).get(b"doc", b"").decode("utf-8")
        lines.append(f"  {field.name:<{width}}  {field.type!s:<20}  {doc}")
    return lines


def describe_rows(
    batches: Iterator[pa.RecordBatch], start: int, count: int, tokenizer: TokenizerInfo | None, color: bool
) -> list[str]:
    """Rows start .. start + count - 1 (global, in shard order): their facts and their decoded documents."""
    lines: list[str] = []
    seen = shown = 0
    for batch in batches:
        for k in range(max(start - seen, 0), batch.num_rows):
            if shown == count:
                return lines
            lines += _describe_row(batch.slice(k, 1), seen + k, tokenizer, color)
            shown += 1
        seen += batch.num_rows
    return lines


def _describe_row(row: pa.RecordBatch, index: int, tokenizer: TokenizerInfo | None, color: bool) -> list[str]:
    values = row.to_pylist()[0]
    try:
        unshifted = unshift_batch(row)
    except ValueError as exc:  # show the others; `export` refuses such a row
        return [f"row {index}  {values['num_tokens']} positions: not a shifted document ({exc})"]
    packed = isinstance(values["source"], list)
    sources = values["source"] if packed else [values["source"]]
    records = values["record_index"] if packed else [values["record_index"]]
    parts = values["part"] if packed else [values["part"]]
    flags = values["flags"] if packed else [values["flags"]]
    lines = [
        f"row {index}  {values['num_tokens']} positions, {values['num_loss_tokens']} counted"
        + (f", {len(sources)} documents" if packed else "")
    ]
    for d in range(unshifted.doc_lengths.size):
        a, b = int(unshifted.doc_offsets[d]), int(unshifted.doc_offsets[d + 1])
        lines.append(
            f"  {'document ' + str(d) + '  ' if packed else ''}{sources[d]}  record {records[d]}  part {parts[d]}"
            f"  flags {_flag_names(flags[d])}"
        )
        text = render_tokens(unshifted.tokens[a:b], unshifted.counted[a:b], tokenizer, color)
        lines += ["    " + line for line in text.split("\n")]
    return lines


def _flag_names(flags: int) -> str:
    names = [flag.name.lower() for flag in RowFlag if flags & flag]
    return ",".join(names) if names else "-"


def render_tokens(tokens: np.ndarray, counted: np.ndarray, tokenizer: TokenizerInfo | None, color: bool) -> str:
    """The document as text (or ids without a tokenizer), each run of counted targets marked."""
    pieces: list[str] = []
    boundaries = np.flatnonzero(np.diff(counted.astype(np.int8))) + 1
    for run in np.split(np.arange(tokens.size), boundaries):
        if run.size == 0:
            continue
        ids = tokens[run].tolist()
        if tokenizer is not None:
            text = tokenizer.tokenizer.decode(ids, skip_special_tokens=False)
        else:
            text = " ".join(map(str, ids))
        if counted[run[0]]:
            text = click.style(text, fg="green", underline=True) if color else f"{OPEN}{text}{CLOSE}"
        pieces.append(text)
    return ("" if tokenizer is not None else " ").join(pieces)
