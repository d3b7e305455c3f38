"""`lossmask export` and `lossmask inspect`: thin click commands over `lossmask.export` and `lossmask.loader`.

Registered on the `lossmask` group in `lossmask/cli.py`. Same exit codes: 0 done, 2 the job cannot run
(missing folder, changed shard, bad option) with one message on stderr.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..errors import SetupError, fails_cleanly

if TYPE_CHECKING:
    from ..loader.shards import ShardSet


@click.command("export")
@click.argument("shards_dir")
@click.argument("out")
@click.option(
    "--to",
    "target",
    type=click.Choice(["hf", "numpy", "olmo-core", "datatrove", "mds", "megatron-bridge"]),
    required=True,
    help="hf: unshifted input_ids + labels (-100) for HF Trainer / TRL; numpy: lossmask's flat memmaps + "
    "header.json; olmo-core: token_ids/labels_mask parts (open-instruct's layout); datatrove: .ds/.ds.index/"
    ".ds.loss (datatrove, nanotron); mds: MosaicML Streaming shards of llm-foundry turns; megatron-bridge: packed "
    "SFT Parquet. docs/export.md has each trainer's config.",
)
@click.option(
    "--file-format",
    type=click.Choice(["parquet", "arrow"]),
    default="parquet",
    show_default=True,
    help="--to hf: Parquet (zstd) or an Arrow IPC stream (what datasets memory-maps).",
)
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check shard sha256s first.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@fails_cleanly
def export_command(shards_dir: str, out: str, target: str, file_format: str, verify: bool, quiet: bool) -> None:
    """Write the shards in SHARDS_DIR (a folder, or an s3:// prefix) to OUT, a local folder, in a layout external
    trainers read as it is."""
    from ..loader.shards import ShardSet
    from ..storage import refuse_url

    refuse_url(out, "OUT")
    shards = ShardSet(shards_dir)
    if target == "hf":
        from .hf import export_hf

        info = export_hf(shards, out, file_format=file_format, verify=verify)
        if not quiet:
            click.echo(
                f"export:   {out}/ (hf {file_format}, {shards.layout} layout: {len(info['files'])} file(s), "
                f"{info['rows']} rows, {info['tokens']} tokens, {info['counted']} counted labels)"
            )
            click.echo(f"load:     datasets.load_dataset({file_format!r}, data_files='{out}/*.{file_format}')")
            click.echo(f"info:     {out}/_export.json")
    elif target == "numpy":
        from .memmap import export_memmap

        header = export_memmap(shards, out, verify=verify)
        if not quiet:
            counts = header["counts"]
            click.echo(
                f"export:   {out}/ (numpy memmaps, {shards.layout} layout: {counts['documents']} documents in "
                f"{counts['rows']} rows, {counts['tokens']} tokens as {header['arrays']['tokens']['dtype']}, "
                f"{counts['loss_tokens']} counted)"
            )
            click.echo(f"header:   {out}/header.json (files, dtypes, counts)")
    else:
        _export_for_trainer(shards, out, target, verify, quiet)


def _export_for_trainer(shards: ShardSet, out: str, target: str, verify: bool, quiet: bool) -> None:
    """The exports in a trainer's own format: one line of what was written, one of what reads it."""
    if target == "olmo-core":
        from .olmo_core import export_olmo_core

        stats = export_olmo_core(shards, out, verify=verify)["overall_statistics"]
        summary = (
            f"{stats['total_instances']} documents, {stats['total_tokens']} tokens, {stats['trainable_tokens']} counted"
        )
        reader = "OLMo-core NumpyPaddedFSLDatasetConfig / NumpyPackedFSLDatasetConfig with label_mask_paths"
    elif target == "datatrove":
        from .datatrove import export_datatrove

        info = export_datatrove(shards, out, verify=verify)
        summary = f"{info['documents']} documents, {info['tokens']} tokens, {info['loss_tokens']} counted"
        reader = f"datatrove DatatroveFolderDataset('{out}', seq_len, token_size={info['token_size']}), nanotron"
    elif target == "mds":
        from .mds import export_mds

        info = export_mds(shards, out, verify=verify)
        summary = f"{info['documents']} documents, {info['tokens']} tokens, {info['loss_tokens']} counted"
        reader = f"streaming.StreamingDataset(local='{out}'), llm-foundry's finetuning dataloader"
    else:
        from .megatron_bridge import export_megatron_bridge

        meta = export_megatron_bridge(shards, out, verify=verify)["packing_metadata"]
        summary = f"packs of at most {meta['pack_size']} positions, up to {meta['max_samples_per_bin']} documents each"
        reader = "Megatron-Bridge PackedSequenceSpecs(packed_train_data_path=..., packed_metadata_path=...)"
    if not quiet:
        click.echo(f"export:   {out}/ ({target}, {shards.layout} layout: {summary})")
        click.echo(f"read by:  {reader}; the config is in docs/export.md")


@click.command("inspect")
@click.argument("shards_dir")
@click.option("--rows", "count", type=click.IntRange(min=0), default=3, show_default=True, help="Rows to decode.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First row to decode.")
@click.option("--tokenizer", help="Tokenizer for decoding (default: the one in the manifest).")
@click.option("--verify", is_flag=True, help="Check every shard's sha256 against the manifest.")
@click.option("--color/--no-color", default=None, help="Mark counted tokens with color (default: on a terminal).")
@fails_cleanly
def inspect_command(
    shards_dir: str, count: int, start: int, tokenizer: str | None, verify: bool, color: bool | None
) -> None:
    """Show SHARDS_DIR (a folder, or an s3:// prefix): the manifest (config, fingerprints, counts), the schema
    and a few decoded rows."""
    from ..loader.shards import ShardSet
    from ..pipeline.tokenizer import TokenizerInfo, load_tokenizer
    from .report import CLOSE, OPEN, describe_manifest, describe_rows, describe_schema

    shards = ShardSet(shards_dir)
    if verify:
        shards.verify()
    for line in describe_manifest(shards.manifest, str(shards.directory), checked=verify or None):
        click.echo(line)
    click.echo()
    schema = shards.open(0).schema if shards.files else shards.schema
    for line in describe_schema(schema, shards.layout):
        click.echo(line)
    if count == 0 or not shards.files:
        return
    info: TokenizerInfo | None = None
    note = ""
    path = tokenizer or shards.tokenizer_path
    if path:
        try:
            info = load_tokenizer(path)
        except SetupError as exc:
            if tokenizer:
                raise
            note = f"  (the manifest's tokenizer cannot be loaded here, so token ids are shown: {exc})"
    click.echo()
    use_color = sys.stdout.isatty() if color is None else color
    marks = "counted targets in color" if use_color else f"counted targets between {OPEN} {CLOSE}"
    click.echo(f"rows {start}..{min(start + count, shards.num_rows) - 1} of {shards.num_rows} ({marks}){note}")
    for line in describe_rows((b for _, b in shards.iter_batches()), start, count, info, use_color):
        click.echo(line, color=use_color)
