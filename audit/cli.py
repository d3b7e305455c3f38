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

from ..cli_options import row_options
from ..errors import SetupError, fails_cleanly
from ..pipeline.config import PrepareConfig, load_config_file


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
@row_options
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
        from .pairs import PAIR_CODES  # a pairs folder's own lints

        validate_selectors([s for s in selectors if s not in PAIR_CODES])
    except ValueError as exc:
        raise SetupError(f"--fail-on: {exc}") from None
    if show < 0:
        raise SetupError("--show must be 0 or more")
    if html_path:
        from ..storage import refuse_url

        refuse_url(html_path, "--html")

    started = time.perf_counter()
    flag_of = {param.name: param.opts[0] for param in click.get_current_context().command.params}
    given = sorted(flag_of[name] for name, value in pipeline.items() if value is not None)
    folders = [t for t in target if is_shards_folder(t)]
    if folders and len(target) > 1:
        raise SetupError(f"{folders[0]} is a shards folder: audit it on its own")
    if folders:
        if given:
            raise SetupError(f"{', '.join(given)}: these apply to raw inputs only; {folders[0]} holds shards already")
        if _is_pairs(folders[0]):
            _audit_pairs(folders[0], tokenizer, show, list(rows), html_path, as_json, selectors, quiet)
            return
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
        from .terminal import print_explain, print_report

        console = Console(highlight=False, markup=False)  # data and paths are printed as they are
        if report.explain is not None:
            print_explain(report, console, rows=bool(rows))
        else:
            print_report(report, console, time.perf_counter() - started)
        if html_path:
            console.print(f"html:     {html_path}")
    failing = report.failing(selectors)
    if failing:
        if not as_json:
            click.echo(f"lossmask audit: --fail-on: {', '.join(lint.code for lint in failing)} fired", err=True)
        sys.exit(1)


def _is_pairs(folder: str) -> bool:
    from ..loader.shards import ShardSet
    from ..schemas.preference import LAYOUT_PAIRS

    try:
        return ShardSet(folder).layout == LAYOUT_PAIRS
    except SetupError:  # no manifest (shards alone), or an unreadable one: the SFT audit says what it can
        return False


def _audit_pairs(
    folder: str,
    tokenizer: str | None,
    show: int,
    rows: list[int],
    html_path: str | None,
    as_json: bool,
    selectors: list[str],
    quiet: bool,
) -> None:
    """A pairs folder: its own report (`audit.pairs`), in the terminal or as JSON; --fail-on as for rows."""
    from .pairs import audit_pairs, print_pairs

    if html_path:
        raise SetupError(f"{folder} holds preference pairs: --html reports SFT rows only; use the terminal or --json")
    report = audit_pairs(folder, tokenizer, show, rows or None)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False))
    elif not quiet:
        print_pairs(report, Console(highlight=False, markup=False))
    wanted = set(selectors)
    failing = [
        lint.code
        for lint in report.lints
        if lint.fired and ("all" in wanted or lint.code in wanted or lint.spec.severity in wanted)
    ]
    if failing:
        if not as_json:
            click.echo(f"lossmask audit: --fail-on: {', '.join(failing)} fired", err=True)
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
