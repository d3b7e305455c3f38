"""Sentinel text that stands in for message content, so a template's rendering shows where each message lands.

A sentinel is `PAD + OPEN + kind + index + "\\n" + CLOSE + PAD`. The private-use OPEN/CLOSE characters never
occur in template text; the ideographic-space PADs reveal whether the template strips the content (Jinja
`trim` and Python `strip` remove them); the newline reveals `tojson` (it becomes a backslash-n, in quotes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

PAD = "\u3000"
OPEN = "\ue000"
CLOSE = "\ue001"
CONTENT = "C"
REASONING = "R"

_OCCURRENCE = re.compile(f"({PAD}?){OPEN}([{CONTENT}{REASONING}])(\\d+)(\n|\\\\n){CLOSE}({PAD}?)")


def sentinel(kind: str, message: int) -> str:
    return f"{PAD}{OPEN}{kind}{message}\n{CLOSE}{PAD}"


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One place where a message's text appears in a sentinel rendering, and how the template changed it."""

    start: int
    end: int
    message: int
    kind: str  # CONTENT or REASONING
    transform: str  # "", "strip", "lstrip", "rstrip" or "json"

    def apply(self, text: str) -> str:
        if self.transform == "":
            return text
        if self.transform == "strip":
            return text.strip()
        if self.transform == "lstrip":
            return text.lstrip()
        if self.transform == "rstrip":
            return text.rstrip()
        return json.dumps(text, ensure_ascii=False)


def find_occurrences(rendered: str) -> tuple[list[Occurrence], bool]:
    """All sentinel occurrences, and whether stray sentinel characters remain (content was cut or rewritten)."""
    found: list[Occurrence] = []
    covered = 0
    for match in _OCCURRENCE.finditer(rendered):
        lpad, kind, index, newline, rpad = match.groups()
        start, end = match.span()
        if newline == "\n":
            transform = {(True, True): "", (False, True): "lstrip", (True, False): "rstrip", (False, False): "strip"}[
                (bool(lpad), bool(rpad))
            ]
        else:
            quoted = start > 0 and rendered[start - 1] == '"' and rendered[end : end + 1] == '"'
            if not (quoted and lpad and rpad):
                return found, True
            start, end, transform = start - 1, end + 1, "json"
        found.append(Occurrence(start, end, int(index), kind, transform))
        covered += 1
    stray = rendered.count(OPEN) != covered or rendered.count(CLOSE) != covered
    return found, stray
