"""Plain text for pretraining: `{"text": "..."}`. Every token is a target; only causal masking applies."""

from __future__ import annotations

from typing import Any

from ...errors import RecordError
from ...schemas.records import SourceRef, TextDocument
from .common import as_str, require
from .options import FormatOptions


def parse(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> TextDocument:
    name = options.field("text")
    text = as_str(require(value, name), name)
    if not text:
        raise RecordError("empty_text", f"{name!r} is empty", field=name)
    return TextDocument(text=text, source=source)
