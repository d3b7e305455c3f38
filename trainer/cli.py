"""`lossmask train` and `lossmask explain`: thin click commands over `trainer.train` and `trainer.explain`.

Registered on the `lossmask` group in the package's `cli.py`. A bad job (no manifest, bad option, missing
tokenizer) prints one line and exits 2, as `lossmask prepare` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import fails_cleanly
from ..storage import refuse_url
from .loss import LOSS_NORMS
from .model import DTYPES
from .shards import open_shards, vocab_size_of
from .train import CURVE_NAME, METRICS_NAME, OBJECTIVES, RUN_NAME, WEIGHTS_NAME, TrainConfig

DEFAULTS = TrainConfig()
OBJECTIVE = click.Choice(OBJECTIVES)
OBJECTIVE_HELP = "sft: rows, masked cross-entropy; dpo: preference pairs against the frozen initial weights."


@click.command()
@click.argument("shards_dir")
@click.option("--out", required=True, help="Run folder: metrics.jsonl, loss.svg, model.npz, run.json.")
@click.option("--objective", type=OBJECTIVE, default=DEFAULTS.objective, show_default=True, help=OBJECTIVE_HELP)
@click.option(
    "--beta", type=float, default=DEFAULTS.beta, show_default=True, help="dpo: the strength of the reference."
)
@click.option("--steps", type=int, default=DEFAULTS.steps, show_default=True, help="Optimizer steps.")
@click.option(
    "--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True, help="Rows (dpo: pairs) per batch."
)
@click.option(
    "--seq-len",
    type=int,
    default=DEFAULTS.seq_len,
    show_default=True,
    help="Positions per row at most (longer rows keep their first L); also the model's context.",
)
@click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--warmup", type=int, default=DEFAULTS.warmup, show_default=True, help="Linear warm-up steps.")
@click.option("--weight-decay", type=float, default=DEFAULTS.weight_decay, show_default=True)
@click.option("--grad-clip", type=float, default=DEFAULTS.grad_clip, show_default=True, help="Max global norm.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Initial weights and shuffle.")
@click.option("--layers", type=int, default=DEFAULTS.layers, show_default=True, help="Transformer blocks.")
@click.option("--d-model", type=int, default=DEFAULTS.d_model, show_default=True, help="Model width.")
@click.option("--heads", type=int, default=DEFAULTS.heads, show_default=True, help="Attention heads.")
@click.option(
    "--loss-norm",
    type=click.Choice(LOSS_NORMS),
    default=DEFAULTS.loss_norm,
    show_default=True,
    help="token: mean over counted targets (the lesson's); sequence: mean of per-document means.",
)
@click.option(
    "--accum-steps",
    type=int,
    default=DEFAULTS.accum_steps,
    show_default=True,
    help="Micro-batches per optimizer step, normalized by the step's total.",
)
@click.option("--shuffle-buffer", type=int, default=DEFAULTS.shuffle_buffer, show_default=True, help="0 = in order.")
@click.option(
    "--eval-rows",
    type=int,
    default=DEFAULTS.eval_rows,
    show_default=True,
    help="Loss on the first N rows, before and after training.",
)
@click.option("--dtype", type=click.Choice(DTYPES), default=DEFAULTS.dtype, show_default=True)
@click.option("--threads", type=int, default=DEFAULTS.threads, show_default=True, help="BLAS threads.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@fails_cleanly
def train(shards_dir: str, out: str, quiet: bool, **options: Any) -> None:
    """Train a tiny NumPy transformer on SHARDS_DIR (from `lossmask prepare`): the loss on counted targets falls."""
    from .train import train as run_train

    config = TrainConfig(**options)
    config.validate()
    # A bad --out, folder, layout or model fails before the bar shows.
    refuse_url(out, "--out")
    config.model_config(vocab_size_of(open_shards(shards_dir, pairs=config.dpo)))
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("counted {task.fields[counted]:,}"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    )
    counted = 0
    with progress:
        task = progress.add_task("train", total=config.steps, loss=float("nan"), counted=0)

        def on_step(record: dict[str, Any]) -> None:
            nonlocal counted
            counted += record["counted_targets"]
            progress.update(task, advance=1, loss=record["loss"], counted=counted)

        summary = run_train(shards_dir, out, config, on_step=on_step)
    if not quiet:
        print_train_summary(summary, Path(out))


def print_train_summary(summary: dict[str, Any], out: Path) -> None:
    evaluation, data, dpo = summary["eval"], summary["data"], summary["train"]["objective"] == "dpo"
    start = "log 2 = 0.6931, the policy is the reference" if dpo else f"log V = {summary['log_vocab']:.4f}"
    click.echo(
        f"loss:     {summary['first_loss']:.4f} at step 1 -> {summary['last_loss']:.4f} at step "
        f"{summary['train']['steps']} ({start})"
    )
    if dpo and evaluation["pairs"]:
        before, after = evaluation["before"], evaluation["after"]
        click.echo(
            f"eval:     loss {before['loss']:.4f} -> {after['loss']:.4f}, margin {before['margin']:.4f} -> "
            f"{after['margin']:.4f}, accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, on the first "
            f"{evaluation['pairs']} pairs (beta {summary['train']['beta']:g})"
        )
    if not dpo and evaluation["rows"]:
        click.echo(
            f"eval:     {evaluation['loss_before']:.4f} before -> {evaluation['loss_after']:.4f} after, on the first "
            f"{evaluation['rows']} rows ({evaluation['counted_targets']} counted targets)"
        )
    items = "pairs" if dpo else "rows"
    scope = f"all {items}, once" if data["complete"] else f"{items} read before training ended, less than one epoch"
    click.echo(
        f"data:     {data['rows']} {items} ({scope}): {data['rows_cut']} cut to --seq-len "
        f"({data['targets_cut']} counted targets lost), {data['rows_skipped']} skipped (nothing counted); "
        f"{data['epochs_started']} epoch(s) started"
    )
    click.echo(f"model:    {summary['parameters']:,} parameters, {summary['model']['dtype']}")
    wall = summary.get("wall_seconds", summary["seconds"])
    click.echo(
        f"time:     {wall:.1f} s wall clock; the {summary['train']['steps']} training steps took "
        f"{summary['seconds']:.1f} s ({1000 * summary['seconds_per_step']:.1f} ms/step), the rest went to reading "
        "the shards, the eval before and after, and saving"
    )
    click.echo(f"metrics:  {out / METRICS_NAME}")
    click.echo(f"curve:    {out / CURVE_NAME}")
    click.echo(f"weights:  {out / WEIGHTS_NAME}")
    click.echo(f"summary:  {out / RUN_NAME}")


@click.command()
@click.argument("shards_dir")
@click.option("--row", type=int, required=True, help="Row number in the shard set (0-based, in shard order).")
@click.option("--run", "run_dir", help="A `lossmask train --out` folder; without it, an untrained model.")
@click.option("--tokenizer", help="Tokenizer for decoding (default: the one in the shards' manifest).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the untrained model.")
@click.option("--context", "context_tokens", type=int, default=8, show_default=True, help="Context tokens shown.")
@fails_cleanly
def explain(
    shards_dir: str, row: int, run_dir: str | None, tokenizer: str | None, seed: int, context_tokens: int
) -> None:
    """The lesson's table for one row: context -> target, counts?, p(target), -log p, and the row's loss."""
    from .explain import explain as run_explain
    from .explain import format_explanation

    explanation = run_explain(shards_dir, row, run_dir, tokenizer, seed, max(context_tokens, 1))
    click.echo(format_explanation(explanation))
