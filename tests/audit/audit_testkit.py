"""Helpers for the audit tests: prepare shards from records, audit them, find the real-world kit.

Imported by the test modules (conftest.py puts this folder on sys.path: pytest runs with --import-mode=importlib,
under which test modules cannot import their neighbors otherwise)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lossmask.audit import AuditReport, open_shards, run_audit, run_sample
from lossmask.audit.lints import LintResult
from lossmask.jobs.prepare import prepare
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.shift import Row

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
FIXTURE_DATA = sorted(str(p) for p in (FIXTURES / "data").glob("*.json*"))
TOKENIZER = str(FIXTURES / "tokenizer")
REALWORLD = Path(os.environ.get("LOSSMASK_REALWORLD", str(ROOT.parent / "shared" / "realworld")))

LESSON = [
    {"role": "user", "content": "What's the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]


def realworld(*parts: str) -> Path:
    """A path in the real-world kit (../shared/realworld); skips the test when the kit is not there."""
    path = REALWORLD.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real-world kit not found at {path} (set LOSSMASK_REALWORLD to its folder)")
    return path


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def prepare_shards(out: Path, inputs: list[str], tokenizer: str = TOKENIZER, **options: Any) -> Path:
    prepare(PrepareConfig(inputs=inputs, tokenizer=tokenizer, out=str(out), **options))
    return out


def audit_shards(folder: Path, **kwargs: Any) -> AuditReport:
    return run_audit(open_shards(str(folder)), **kwargs)


def audit_sample(
    inputs: list[str],
    tokenizer: str = TOKENIZER,
    sample: int = 1000,
    view: dict[str, Any] | None = None,
    **options: Any,
) -> AuditReport:
    """Raw inputs through the pipeline (`options` as for prepare), audited; `view` goes to run_audit."""
    config = PrepareConfig(inputs=inputs, tokenizer=tokenizer, **options)
    return run_audit(run_sample(config, sample), **(view or {"show": 1}))


def function_tool(name: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAI-style tool definition whose parameters (name=JSON type) are all required."""
    properties = {key: {"type": kind} for key, kind in parameters.items()}
    schema = {"type": "object", "properties": properties, "required": list(parameters)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


def handmade_row(tokens: list[int], classes: list[int], counted: list[int], flags: int = 0, index: int = 0) -> Row:
    """A row not made by lossmask's pipeline, given per token (the first token's class and flag are unused)."""
    ids = np.asarray(tokens, dtype=np.int32)
    return Row(
        input_ids=ids[:-1],
        target_ids=ids[1:],
        loss_mask=np.asarray(counted[1:], dtype=np.uint8),
        token_class=np.asarray(classes[1:], dtype=np.uint8),
        source=f"handmade:{index + 1}",
        record_index=index,
        part=0,
        flags=flags,
    )


def fired(report: AuditReport) -> dict[str, LintResult]:
    return {lint.code: lint for lint in report.fired()}
