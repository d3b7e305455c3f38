"""What a `prepare` job's manifest says, and the digest that names the job: the config that shapes the output,
the fingerprints of its inputs, tokenizer and template, and what was written. Shared by the record-stream job
(`jobs.prepare`) and the unit job (`jobs.units`), so both write the same manifest for the same output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..pipeline.accounting import Accounting
from ..pipeline.batch import JobContext
from ..pipeline.config import PrepareConfig
from ..pipeline.read import InputFile, input_sha256, input_size
from ..schemas.layouts import LAYOUTS
from .checkpoint import job_digest

# Settings that change how the job runs, never what it writes: left out of the digest and the manifest, so the
# output is byte-identical whatever they are.
RUNTIME_FIELDS = ("out", "engine", "workers", "batch_size", "resume", "overwrite", "encoder")


def output_config(config: PrepareConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS}


def fingerprints(
    config: PrepareConfig,
    context: JobContext,
    paths: list[InputFile],
    hashes: Callable[[list[InputFile]], list[str]] | None = None,
) -> dict[str, Any]:
    """The inputs' sizes and sha256 (computed here, or by `hashes`: the Ray engine hashes in tasks, so that the
    driver reads no input), the tokenizer's and the template's."""
    template = context.template
    sha256 = hashes(paths) if hashes is not None else [input_sha256(p) for p in paths]
    return {
        "inputs": [
            {"path": str(p), "bytes": input_size(p), "sha256": digest} for p, digest in zip(paths, sha256, strict=True)
        ],
        "tokenizer": {"path": config.tokenizer, "sha256": context.tokenizer.fingerprint},
        "template": None if template is None else {"name": template.name, "sha256": template.sha256},
    }


def build_manifest(
    config: PrepareConfig,
    context: JobContext,
    prints: dict[str, Any],
    accounting: Accounting,
    shards: list[Any],
    packing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    template = context.template
    profile = context.renderer.profile
    schema, version = LAYOUTS[config.layout]
    manifest = {
        "lossmask_version": __version__,
        "schema_version": version,
        "layout": config.layout,
        "schema": {f.name: {"type": str(f.type), "doc": f.metadata[b"doc"].decode()} for f in schema},
        "config": output_config(config),
        "fingerprints": prints,
        "template": None
        if template is None or profile is None
        else {
            "name": template.name,
            "content_format": profile.content_format,
            "renders_reasoning": profile.renders_reasoning,
            "end_of_turn_markers": list(profile.eot_markers),
            "stop_sequences": list(profile.stop_sequences),
            "stops_at_next_header": profile.stops_at_next_header,
            "tool_arguments": profile.tool_arguments,
            "text_markers": list(profile.text_markers),
            "reasoning_tags": list(dataclasses.astuple(context.renderer.reasoning_tags)),
            "has_generation_tags": template.has_generation_tags,
        },
        "tokenizer": {
            "vocab_size": context.tokenizer.vocab_size,
            "special_tokens": context.tokenizer.special_tokens,
            "control_tokens": len(context.tokenizer.control_tokens),
            "stop_tokens": list(context.tokenizer.stop_tokens),
            # Checked only when something was escaped, so the manifest does not depend on which process did it.
            "escape_supported": context.tokenizer.escape_supported if accounting.row_flags["special_escaped"] else None,
        },
        "shards": [s.to_dict() for s in shards],
        "totals": {
            "rows": sum(s.rows for s in shards),
            "tokens": sum(s.tokens for s in shards),
            "loss_tokens": sum(s.loss_tokens for s in shards),
        },
        "records": accounting.to_dict(),
    }
    if packing is not None:
        manifest["packing"] = packing
    return manifest


def digest_of(config: PrepareConfig, prints: dict[str, Any]) -> str:
    """The job's digest: what names its output (`jobs.checkpoint`, `jobs.outdir`)."""
    return job_digest({"version": __version__, "config": output_config(config), "fingerprints": prints})
