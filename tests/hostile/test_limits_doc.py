"""docs/limits.md says what the code does: its table's defaults are the code's, and every reason it explains
is one `schemas.reasons` knows (so a renamed reason or a changed default fails here, not in a user's job)."""

from __future__ import annotations

import re

from lossmask.pipeline.formats.options import MAX_MESSAGE_CHARS, MAX_RECORD_BYTES
from lossmask.pipeline.templates.limits import DEFAULT_MAX_CHARS, DEFAULT_TIMEOUT
from lossmask.schemas.reasons import REJECT_REASONS

from ..support import ROOT

DOC = (ROOT / "docs" / "limits.md").read_text(encoding="utf-8")


def test_the_table_gives_the_codes_defaults():
    rows = {
        m.group(2): m.group(1) for m in re.finditer(r"^\| [^|]+ \| ([^|]+) \| `--[a-z-]+` / `([a-z_]+)` \|", DOC, re.M)
    }
    assert rows == {
        "max_record_bytes": f"64 MiB ({MAX_RECORD_BYTES:,})",
        "max_message_chars": f"2 Mi ({MAX_MESSAGE_CHARS:,})",
        "template_timeout": f"{DEFAULT_TIMEOUT:g}",
        "template_max_chars": f"8 Mi ({DEFAULT_MAX_CHARS:,})",
    }
    assert MAX_RECORD_BYTES == 64 << 20 and MAX_MESSAGE_CHARS == 2 << 20 and DEFAULT_MAX_CHARS == 8 << 20


def test_every_reason_it_explains_exists():
    explained = re.findall(r"^\| `([a-z0-9_]+)` \|", DOC, re.M)
    assert len(explained) == 10
    assert set(explained) <= set(REJECT_REASONS)
