"""The command-line options that decide what rows the pipeline makes, declared once for every command that runs
the stages (`prepare` writes the rows; `audit` on raw inputs runs the same stages and writes nothing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .pipeline.config import CHOICES


def choice(name: str) -> click.Choice:
    return click.Choice(CHOICES[name])


ROW_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--chat-template",
        help="A .jinja file or a built-in name (chatml, llama3, mistral, gemma, phi3, zephyr, alpaca).",
    ),
    click.option("--format", "format_", type=choice("format"), help="Input format (default: detected per file)."),
    click.option("--mask", type=choice("mask"), help="What trains: assistant turns (default), the last one, or all."),
    click.option("--train-roles", help="Comma-separated roles whose messages train (default: assistant)."),
    click.option("--train-eot/--no-train-eot", "train_end_of_turn", default=None, help="Train end-of-turn markers."),
    click.option("--train-reasoning/--no-train-reasoning", default=None, help="Train reasoning (<think>) text."),
    click.option(
        "--generation-tags/--no-generation-tags",
        "use_generation_tags",
        default=None,
        help="Honor {% generation %} blocks when the template has them.",
    ),
    click.option("--max-length", type=int, help="Maximum positions per row (tokens - 1)."),
    click.option(
        "--overflow",
        type=choice("overflow"),
        help="Over-long examples: truncate (default; chat drops the earliest whole turns first), drop, or split "
        "(text: consecutive windows; chat: runs of whole turns).",
    ),
    click.option(
        "--truncate-side", type=choice("truncate_side"), help="Which end truncation cuts: right (default) or left."
    ),
    click.option(
        "--special-tokens-in-content",
        type=choice("special_tokens_in_content"),
        help="Control-token strings inside message text: escape (plain text, default), reject or allow.",
    ),
    click.option(
        "--unfaithful-turns",
        type=choice("unfaithful_turns"),
        help="Turns a template renders unlike inference: split (default), faithful-only, as-rendered, reject.",
    ),
    click.option(
        "--dropped-messages",
        type=choice("dropped_messages"),
        help="Messages the template leaves out: reject the record (default) or keep it.",
    ),
]


def row_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every option of `ROW_OPTIONS` to a click command."""
    for option in reversed(ROW_OPTIONS):
        command = option(command)
    return command
