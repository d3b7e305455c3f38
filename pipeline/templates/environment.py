"""A Jinja environment that renders chat templates the way transformers' `apply_chat_template` does.

Same sandbox and options (`ImmutableSandboxedEnvironment`, `trim_blocks`, `lstrip_blocks`, `loopcontrols`), same
globals (`raise_exception`, `strftime_now`, `namespace`, `dict`) and the same `tojson` (no HTML escaping,
`ensure_ascii=False`), plus the `{% generation %}` tag, whose character spans we record. One difference, on
purpose: `strftime_now` returns a fixed date (`template_date`, default 2024-07-26) instead of today's, so the
same data gives the same bytes on any day (Llama 3.1 templates print "Today Date").
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TEMPLATE_DATE = "2024-07-26"


class GenerationTracker(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: records the character span each block renders to."""

    tags = {"generation"}  # noqa: RUF012 - Jinja reads this class attribute

    def __init__(self, environment: jinja2.Environment):
        super().__init__(environment)
        environment.extend(generation_state=None)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_track", []), [], [], body).set_lineno(lineno)

    def _track(self, caller: Any) -> str:
        text = caller()
        state = self.environment.generation_state  # type: ignore[attr-defined]
        if state is not None:
            blocks, spans = state
            start = sum(len(block) for block in blocks)
            spans.append((start, start + len(text)))
        return text


class _TemplateNamespace(jinja2.utils.Namespace):
    """Like transformers': refuses underscore attributes so templates cannot reach Python internals."""

    def __init__(*args: Any, **kwargs: Any):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"templates cannot set underscore attributes ({name!r})")


class TemplateRule(jinja2.exceptions.TemplateError):
    """A template's own refusal, `raise_exception("...")`: a rule about the conversations it renders."""


def _raise_exception(message: str) -> None:
    raise TemplateRule(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def make_environment(template_date: str = DEFAULT_TEMPLATE_DATE) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationTracker, jinja2.ext.loopcontrols],
    )
    fixed = datetime.fromisoformat(template_date)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = fixed.strftime
    env.globals["namespace"] = _TemplateNamespace
    env.globals["dict"] = dict
    return env
