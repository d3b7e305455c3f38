"""`lossmask prepare`: the click command over `jobs.prepare.prepare`, and the summary it prints.

Exit codes: 0 done (rejects reported); 1 done, `--strict` and some record was rejected; 2 the job could not run
(see `errors`) or wrote nothing (the manifest is written, and the top reasons printed); 130 / 143 stopped by
SIGINT / SIGTERM, resumable with the same command.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..cli_options import choice, default, row_options
from ..errors import fails_cleanly
from ..pipeline.config import PrepareConfig, load_config_file
from ..pipeline.encoders import ENCODER_NAMES
from .signals import stops_cleanly


@click.command()
@click.argument("inputs", nargs=-1)
@click.option(
    "--tokenizer",
    help="A tokenizer.json, a model folder (tokenizer.json + tokenizer_config.json), or a Hub id org/name[@revision].",
)
@click.option(
    "--out",
    help="Output folder for the shards, _manifest.json and _rejects.jsonl, or an object-store prefix "
    "(s3://bucket/prefix, docs/scale.md).",
)
@row_options
@click.option("--pack", type=int, help="Pack whole documents into rows of at most N positions (best-fit decreasing).")
@click.option("--concat", type=int, help="Join documents and cut rows of exactly N positions (pretraining text).")
@click.option(
    "--pack-window", type=int, help=f"Documents packed together; 0 = the whole dataset {default('pack_window')}."
)
@click.option("--config", "config_file", help="A YAML or TOML file with the same options; flags override it.")
@click.option("--strict", is_flag=True, default=None, help="Exit 1 when any record is rejected.")
@click.option("--resume/--fresh", default=None, help="Finish a killed run of the same job (default) or start over.")
@click.option(
    "--overwrite",
    is_flag=True,
    default=None,
    help="Replace another job's output in --out. Files lossmask cannot prove its own are never touched.",
)
@click.option(
    "--engine",
    type=choice("engine"),
    help=f"local: this machine; ray: Ray Data (pip install .[ray]) {default('engine')}.",
)
@click.option(
    "--encoder",
    type=click.Choice(ENCODER_NAMES),
    help="auto: tiktoken's faster BPE where it is proven to give the tokenizer's ids (inputs of 4 MB or more), else "
    f"tokenizers; tokenizers; tiktoken (required) {default('encoder')}.",
)
@click.option("--workers", type=int, help="Worker processes (default: every core). Output does not depend on it.")
@click.option("--batch-size", type=int, help=f"Records per processing batch {default('batch_size')}.")
@click.option("--shard-max-rows", type=int, help=f"Rows per shard at most {default('shard_max_rows')}.")
@click.option(
    "--unit-bytes",
    type=int,
    help=f"Bytes of input per work unit, whose rows get shards of their own {default('unit_bytes')}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@fails_cleanly
def prepare(inputs: tuple[str, ...], config_file: str | None, quiet: bool, format_: str | None, **flags: Any) -> None:
    """Turn INPUT files (JSONL, JSON, Parquet, Arrow; .gz/.zst) into token shards with loss masks."""
    from .prepare import prepare as run_prepare

    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    if inputs:
        values["inputs"] = list(inputs)
    if format_ is not None:
        values["format"] = format_
    for key, value in flags.items():
        if value is not None:
            values[key] = value
    config = PrepareConfig.from_mapping(values)
    config.require_paths()
    started = time.perf_counter()
    with stops_cleanly():
        manifest = run_prepare(config)
    elapsed = time.perf_counter() - started
    if not quiet:
        print_summary(manifest, config.out, elapsed)
    records = manifest["records"]
    if not records["written"]:
        print(f"lossmask: error: {nothing_written(records)}", file=sys.stderr)
        sys.exit(2)
    if config.strict and records["rejected"]:
        sys.exit(1)


def nothing_written(records: dict[str, Any]) -> str:
    """One line for a job that wrote no record: how many were read and the commonest reasons they were not."""
    if not records["read"]:
        return "the inputs hold no records; nothing was written"
    reasons = [
        (count, f"{status}: {reason}")
        for status in ("rejected", "dropped")
        for reason, count in records["by_reason"][status].items()
    ]
    top = ", ".join(f"{count} {what}" for count, what in sorted(reasons, key=lambda r: -r[0])[:3])
    return f"none of the {records['read']} records was written ({top}); see _rejects.jsonl for each record"


def print_summary(manifest: dict[str, Any], out: str, elapsed: float) -> None:
    records, totals = manifest["records"], manifest["totals"]
    rate = totals["tokens"] / elapsed if elapsed > 0 else 0.0
    click.echo(f"shards:   {out}/ ({len(manifest['shards'])} shard(s), {totals['rows']} rows)")
    click.echo(f"tokens:   {totals['tokens']} positions, {totals['loss_tokens']} counted targets")
    packing = manifest.get("packing")
    if packing:
        click.echo(
            f"packing:  {packing['mode']} {packing['length']}: {packing['rows']} rows, fill rate "
            f"{100 * packing['fill_rate']:.2f}% (padding overhead {100 * packing['padding_overhead']:.2f}%)"
        )
    click.echo(
        f"records:  {records['read']} read = {records['written']} written + {records['rejected']} rejected "
        f"+ {records['dropped']} dropped"
    )
    for status in ("rejected", "dropped"):
        for reason, count in records["by_reason"][status].items():
            click.echo(f"          {count:>6} {status}: {reason}")
    datasets = manifest.get("datasets") or []
    if len(datasets) > 1:
        for dataset in datasets:
            click.echo(
                f"          {dataset['name']}: {dataset['sampled']} sampled, {dataset['written']} written, "
                f"{dataset['rejected']} rejected, {dataset['dropped']} dropped"
            )
    evaluation = manifest.get("eval")
    if evaluation:
        held = evaluation["records"]
        click.echo(
            f"eval:     {out}/eval/ ({held['written']} records written, {evaluation['totals']['rows']} rows; "
            "its own manifest)"
        )
    if records["rejected"] or records["dropped"]:
        click.echo(f"rejects:  {out}/_rejects.jsonl (file:line and reason for each)")
    click.echo(f"manifest: {out}/_manifest.json")
    click.echo(f"time:     {elapsed:.2f} s ({rate:,.0f} tokens/s)")
