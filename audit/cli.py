"""`lossmask audit TARGET`: a shards folder from `prepare`, or raw inputs with the same options as `prepare`.

Exit codes: 0 done; 1 a lint named by --fail-on fired; 2 the audit could not run (one message on stderr).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ..pipeline.config import CHOICES, PrepareConfig, load_config_file
from ..pipeline.errors import SetupError, fails_cleanly


def _choice(name: str) -> click.Choice:
    return click.Choice(CHOICES[name])


@click.command()
@click.argument("target", nargs=-1, required=True)
@click.option(
    "--tokenizer",
    help="Raw inputs: the tokenizer (required). Shards: where to find it if it moved since prepare.",
)
@click.option("--sample", type=int, default=1000, show_default=True, help="Raw inputs: audit the first N records.")
@click.option("--show", type=int, default=3, show_default=True, help="Show K example rows, spread over the data.")
@click.option("--row", "rows", type=int, multiple=True, help="Show this row (repeatable) instead of --show K.")
@click.option("--explain", type=int, help="Print the lesson's table for row R: context -> next token -> counted?")
@click.option("--html", "html_path", help="Write a self-contained HTML report to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary (JSON) instead of the report.")
@click.option(
    "--fail-on",
    help="Exit 1 when any of these lints fires: codes separated by commas, or error, warning, all.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (use with --html, --fail-on).")
@click.option(
    "--chat-template", help="A .jinja file or a built-in name (chatml, llama3, mistral, gemma, phi3, zephyr, alpaca)."
)
@click.option("--format", "format_", type=_choice("format"), help="Input format (default: detected per file).")
@click.option("--mask", type=_choice("mask"), help="What trains: assistant turns (default), the last one, or all.")
@click.option("--train-roles", help="Comma-separated roles whose messages train (default: assistant).")
@click.option("--train-eot/--no-train-eot", "train_end_of_turn", default=None, help="Train end-of-turn markers.")
@click.option("--train-reasoning/--no-train-reasoning", default=None, help="Train reasoning (<think>) text.")
@click.option(
    "--generation-tags/--no-generation-tags",
    "use_generation_tags",
    default=None,
    help="Honor {% generation %} blocks when the template has them.",
)
@click.option("--max-length", type=int, help="Maximum positions per row (tokens - 1).")
@click.option(
    "--overflow",
    type=_choice("overflow"),
    help="Over-long examples: truncate (default; chat drops the earliest whole turns first), drop, or split.",
)
@click.option(
    "--truncate-side", type=_choice("truncate_side"), help="Which end truncation cuts: right (default) or left."
)
@click.option(
    "--special-tokens-in-content",
    type=_choice("special_tokens_in_content"),
    help="Control-token strings inside message text: escape (plain text, default), reject or allow.",
)
@click.option(
    "--unfaithful-turns",
    type=_choice("unfaithful_turns"),
    help="Turns a template renders unlike inference: split (default), faithful-only, as-rendered, reject.",
)
@click.option(
    "--dropped-messages",
    type=_choice("dropped_messages"),
    help="Messages the template leaves out: reject the record (default) or keep it.",
)
@click.option("--config", "config_file", help="A YAML or TOML file with the prepare options; flags override it.")
@click.option("--batch-size", type=int, help="Records per processing batch (default 256).")
@fails_cleanly
def audit(
    target: tuple[str, ...],
    tokenizer: str | None,
    sample: int,
    show: int,
    rows: tuple[int, ...],
    explain: int | None,
    html_path: str | None,
    as_json: bool,
    fail_on: str | None,
    quiet: bool,
    **pipeline: Any,
) -> None:
    """Show which tokens train and check them: TARGET is a shards folder, or INPUT files with --tokenizer."""
    from .report import run_audit, validate_selectors
    from .source import is_shards_folder, open_shards, run_sample

    selectors = [s.strip() for s in (fail_on or "").split(",") if s.strip()]
    try:
        validate_selectors(selectors)
    except ValueError as exc:
        raise SetupError(f"--fail-on: {exc}") from None
    if show < 0:
        raise SetupError("--show must be 0 or more")

    started = time.perf_counter()
    flag_of = {param.name: param.opts[0] for param in click.get_current_context().command.params}
    given = sorted(flag_of[name] for name, value in pipeline.items() if value is not None)
    folders = [t for t in target if is_shards_folder(t)]
    if folders and len(target) > 1:
        raise SetupError(f"{folders[0]} is a shards folder: audit it on its own")
    if folders:
        if given:
            raise SetupError(f"{', '.join(given)}: these apply to raw inputs only; {folders[0]} holds shards already")
        source = open_shards(folders[0], tokenizer)
    else:
        source = run_sample(_raw_config(list(target), tokenizer, pipeline), sample)

    report = run_audit(source, show=show, rows=list(rows) or None, explain=explain, link_examples=bool(html_path))
    if html_path:
        from .htmlreport import write_html

        write_html(report, Path(html_path))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False))
    elif not quiet:
        from .terminal import print_report

        console = Console(highlight=False, markup=False)  # data and paths are printed as they are
        print_report(report, console, time.perf_counter() - started)
        if html_path:
            console.print(f"html:     {html_path}")
    failing = report.failing(selectors)
    if failing:
        if not as_json:
            click.echo(f"lossmask audit: --fail-on: {', '.join(lint.code for lint in failing)} fired", err=True)
        sys.exit(1)


def _raw_config(inputs: list[str], tokenizer: str | None, pipeline: dict[str, Any]) -> PrepareConfig:
    """The same configuration `prepare` would build from these flags (without an output folder)."""
    config_file = pipeline.pop("config_file", None)
    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    values.pop("out", None)
    values["inputs"] = inputs
    if tokenizer:
        values["tokenizer"] = tokenizer
    format_ = pipeline.pop("format_", None)
    if format_ is not None:
        values["format"] = format_
    for key, value in pipeline.items():
        if value is not None:
            values[key] = value
    return PrepareConfig.from_mapping(values)
