"""The command-line options that decide what rows the pipeline makes, declared once for every command that runs
the stages (`prepare` writes the rows; `audit` on raw inputs runs the same stages and writes nothing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .pipeline.config import CHOICES, PrepareConfig

DEFAULTS = PrepareConfig()  # help texts quote the defaults from here, so they cannot drift from the code


def choice(name: str) -> click.Choice:
    return click.Choice(CHOICES[name])


def default(name: str) -> str:
    """`(default X)` for an option, read from `PrepareConfig()`."""
    value = getattr(DEFAULTS, name)
    if isinstance(value, bool):
        value = "on" if value else "off"
    elif isinstance(value, list):
        value = ",".join(value)
    return f"(default {value})"


ROW_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--chat-template",
        help="A .jinja file or a built-in name (chatml, llama3, mistral, gemma, phi3, zephyr, alpaca).",
    ),
    click.option("--format", "format_", type=choice("format"), help="Input format (default: detected per file)."),
    click.option(
        "--mask", type=choice("mask"), help=f"What trains: assistant turns, the last one, or all {default('mask')}."
    ),
    click.option("--train-roles", help=f"Comma-separated roles whose messages train {default('train_roles')}."),
    click.option(
        "--train-eot/--no-train-eot",
        "train_end_of_turn",
        default=None,
        help=f"Train end-of-turn markers {default('train_end_of_turn')}.",
    ),
    click.option(
        "--train-reasoning/--no-train-reasoning",
        default=None,
        help=f"Train reasoning (<think>) text {default('train_reasoning')}.",
    ),
    click.option(
        "--train-tool-calls/--no-train-tool-calls",
        default=None,
        help=f"Train the assistant's tool calls (names, arguments, their wrappers) {default('train_tool_calls')}.",
    ),
    click.option(
        "--reasoning-tags",
        help="The tags of a think block at the start of assistant content, 'OPEN,CLOSE' (default: the template's "
        "own, else '<think>,</think>').",
    ),
    click.option(
        "--allow-text-markers",
        is_flag=True,
        default=None,
        help="Accept a template whose turn markers are no tokens of the tokenizer (trained as plain text).",
    ),
    click.option(
        "--tool-call-ids",
        type=choice("tool_call_ids"),
        help="keep the data's tool-call ids, or generate ids from the record where a template's rule needs them "
        f"(Mistral: 9 alphanumerics) {default('tool_call_ids')}.",
    ),
    click.option(
        "--generation-tags/--no-generation-tags",
        "use_generation_tags",
        default=None,
        help=f"Honor {{% generation %}} blocks when the template has them {default('use_generation_tags')}.",
    ),
    click.option("--max-length", type=int, help="Maximum positions per row (tokens - 1)."),
    click.option(
        "--overflow",
        type=choice("overflow"),
        help="Over-long examples: truncate (chat drops the earliest whole turns first), drop, or split "
        f"(text: consecutive windows; chat: runs of whole turns) {default('overflow')}.",
    ),
    click.option(
        "--truncate-side",
        type=choice("truncate_side"),
        help=f"Which end truncation cuts: right or left {default('truncate_side')}.",
    ),
    click.option(
        "--special-tokens-in-content",
        type=choice("special_tokens_in_content"),
        help="Control-token strings inside message text: escape (plain text), reject or allow "
        f"{default('special_tokens_in_content')}.",
    ),
    click.option(
        "--unfaithful-turns",
        type=choice("unfaithful_turns"),
        help="Turns a template renders unlike inference: split, faithful-only, as-rendered, reject "
        f"{default('unfaithful_turns')}.",
    ),
    click.option(
        "--dropped-messages",
        type=choice("dropped_messages"),
        help=f"Messages the template leaves out: reject the record, or keep it {default('dropped_messages')}.",
    ),
    # Limits on one record (docs/prepare.md, "Limits").
    click.option(
        "--max-record-bytes",
        type=int,
        help=f"Skip a longer record without reading it whole (record_too_large) {default('max_record_bytes')}.",
    ),
    click.option(
        "--max-message-chars",
        type=int,
        help=f"Reject a longer message, text, prompt or completion {default('max_message_chars')}.",
    ),
    click.option(
        "--template-timeout",
        type=float,
        help=f"Seconds one rendering of the chat template may take {default('template_timeout')}.",
    ),
    click.option(
        "--template-max-chars",
        type=int,
        help=f"Characters one rendering (or a value it builds) may have {default('template_max_chars')}.",
    ),
]


def row_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every option of `ROW_OPTIONS` to a click command."""
    for option in reversed(ROW_OPTIONS):
        command = option(command)
    return command
