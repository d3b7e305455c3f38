"""Fixtures for the audit tests; the helpers live in audit_testkit.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_testkit import FIXTURE_DATA, audit_shards, prepare_shards
from lossmask.audit import AuditReport


@pytest.fixture(scope="session")
def clean_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of every bundled fixture file, prepared with the default options."""
    return prepare_shards(tmp_path_factory.mktemp("clean") / "shards", FIXTURE_DATA)


@pytest.fixture(scope="session")
def clean_report(clean_shards: Path) -> AuditReport:
    return audit_shards(clean_shards, show=3, link_examples=True)
