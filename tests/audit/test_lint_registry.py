"""The lint registry and its documentation: every registered lint has its section in docs/audit.md, under its
code and severity and in the order the reports list them, and every lint section there is a registered lint."""

from __future__ import annotations

import re

import pytest
from audit_testkit import ROOT
from lossmask.audit.lints import CODES, LINTS, SPEC, lint

DOCS = ROOT / "docs" / "audit.md"
SECTION = re.compile(r"### `(?P<code>[a-z0-9-]+)` \((?P<severity>error|warning)\)")


def documented_lints() -> list[tuple[str, str]]:
    """(code, severity) of each `### `code` (severity)` heading of the `## Lints` chapter, in order."""
    text = DOCS.read_text(encoding="utf-8")
    chapter = text.split("\n## Lints\n", 1)[1].split("\n## ", 1)[0]
    headings = [line for line in chapter.splitlines() if line.startswith("### ")]
    sections = []
    for heading in headings:
        match = SECTION.fullmatch(heading)
        assert match, f"docs/audit.md: a lint heading must read ### `code` (error|warning), not {heading!r}"
        sections.append((match["code"], match["severity"]))
    return sections


def test_every_registered_lint_has_its_section_in_the_docs() -> None:
    documented = dict(documented_lints())
    missing = [code for code in CODES if code not in documented]
    assert not missing, f"no section in docs/audit.md for: {', '.join(missing)}"
    wrong = [code for code in CODES if documented[code] != SPEC[code].severity]
    assert not wrong, f"docs/audit.md gives another severity for: {', '.join(wrong)}"


def test_every_lint_section_in_the_docs_is_a_registered_lint() -> None:
    unknown = [code for code, _ in documented_lints() if code not in SPEC]
    assert not unknown, f"docs/audit.md documents lints that are not registered: {', '.join(unknown)}"


def test_the_docs_list_the_lints_in_the_order_of_the_reports() -> None:
    assert [code for code, _ in documented_lints()] == list(CODES)


def test_the_registry_is_the_spec_list_and_each_lint_is_its_own_function() -> None:
    assert [registered.spec.code for registered in LINTS] == list(CODES)
    assert len({registered.check for registered in LINTS}) == len(LINTS)


@pytest.mark.parametrize(
    ("code", "severity", "message"),
    [("double-bos", "error", "registered twice"), ("new-lint", "fatal", "severity must be one of")],
)
def test_a_duplicate_code_or_an_unknown_severity_is_refused(code: str, severity: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lint(code, severity, "title", "hint")
