"""The `lossmask` command: thin click commands over the Python API, each imported only when it runs.

Exit codes: 0 done; 1 `--strict` and some record was rejected (or `audit --fail-on` fired); 2 the job could not
run (missing input, bad tokenizer path, broken template, bad option), with one message saying what to fix.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from . import __version__

# name -> (module:attribute, one-line help). `lossmask --help` shows these without importing the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("lossmask.jobs.cli:prepare", "Turn INPUT files into token shards with loss masks."),
    "audit": ("lossmask.audit.cli:audit", "Show which tokens train, with lints; shards or raw inputs."),
    "train": ("lossmask.trainer.cli:train", "Train the NumPy reference model on shards (the proof)."),
    "explain": ("lossmask.trainer.cli:explain", "The lesson's table for one example: context -> target -> loss."),
    "export": ("lossmask.export.cli:export_command", "Write shards in a trainer's format (hf, numpy, ...)."),
    "inspect": ("lossmask.export.cli:inspect_command", "The manifest, the schema and a few rows of a shard set."),
}


class LazyGroup(click.Group):
    """Subcommands imported on first use, so that `lossmask --help` costs click and nothing else."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            module, attribute = COMMANDS[name][0].split(":")
            self.commands[name] = getattr(importlib.import_module(module), attribute)
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="lossmask")
def main() -> None:
    """Chat transcripts and raw text -> training-ready token shards with verified loss masks."""


if __name__ == "__main__":  # pragma: no cover
    main()
