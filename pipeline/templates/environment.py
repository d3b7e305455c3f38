"""A Jinja environment that renders chat templates the way transformers' `apply_chat_template` does.

Same sandbox and options (`ImmutableSandboxedEnvironment`, `trim_blocks`, `lstrip_blocks`, `loopcontrols`), same
globals (`raise_exception`, `strftime_now`, `namespace`, `dict`) and the same `tojson` (no HTML escaping,
`ensure_ascii=False`), plus the `{% generation %}` tag, whose character spans we record. Two differences, on
purpose: `strftime_now` returns a fixed date (`template_date`, default 2024-07-26) instead of today's, so the
same data gives the same bytes on any day (Llama 3.1 templates print "Today Date"); and a rendering has a
budget of time and size (`limits`), enforced in the environment's hooks: every loop step, call and output checks
the deadline, and every operator, call and filter that can build a large value checks its size first (`guards`).
Templates that stay within the budget render byte for byte as transformers renders them.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .guards import GUARDED_FILTERS, check_binop, check_call, check_concat, check_filter
from .limits import Budget

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


class _LimitedCodeGenerator(jinja2.compiler.CodeGenerator):
    """Compiles templates so that the budget sees what the sandbox alone does not: every loop's items go through
    `environment.guarded_loop` (a deadline check per step), every `~` through `environment.checked_concat`, and
    constant text through `environment.produced`, like the values `finalize` sees (counted wherever they are
    output: a macro's or `{% set %}` block's text is built the same way, without being yielded)."""

    def visit_For(self, node: jinja2.nodes.For, frame: jinja2.compiler.Frame) -> None:
        if not _is_guarded(node.iter):
            guard = jinja2.nodes.EnvironmentAttribute("guarded_loop", lineno=node.lineno)
            node.iter = jinja2.nodes.Call(guard, [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: jinja2.compiler.Frame) -> None:
        self.write("environment.checked_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.produced({super()._output_const_repr(group)})"


def _is_guarded(node: jinja2.nodes.Node) -> bool:
    return (
        isinstance(node, jinja2.nodes.Call)
        and isinstance(node.node, jinja2.nodes.EnvironmentAttribute)
        and node.node.name == "guarded_loop"
    )


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' sandbox, with a `budget` that `ChatTemplate` sets for the length of one rendering (None:
    no limits, as when a template is compiled)."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any):
        super().__init__(finalize=self._finalize, **options)
        self.budget: Budget | None = None

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        budget = self.budget
        if budget is not None:
            # Templates add strings all the time: that case, and its answer, first.
            both_str = operator == "+" and type(left) is str and type(right) is str
            if not both_str or len(left) + len(right) > budget.max_chars:
                check_binop(budget, operator, left, right)
        return self.binop_table[operator](left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = __self.budget
        if budget is None:
            return super().call(__context, __obj, *args, **kwargs)
        budget.check_time()
        args = check_call(budget, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str):
            budget.check_size(len(result), "a value")
        return result

    def checked_concat(self, parts: tuple[Any, ...]) -> str:
        texts = [str(part) for part in parts]
        if self.budget is not None:
            check_concat(self.budget, texts)
        return "".join(texts)

    def guarded_loop(self, items: Any) -> Any:
        return items if self.budget is None else self.budget.guard(items)

    def produced(self, text: str) -> str:
        return text if self.budget is None else self.budget.produce(text)

    def _finalize(self, value: Any) -> str:
        """Every `{{ value }}`, as Jinja would print it (`str`), counted."""
        text = str(value)
        return text if self.budget is None else self.budget.produce(text)

    def limit_filters(self) -> None:
        """Wrap every filter: the deadline before it runs, the size of what it makes (before, for the filters
        that can make more than they are given; after, for every string)."""
        self.filters = {name: self._limited_filter(name, f) for name, f in self.filters.items()}

    def _limited_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function) if name in GUARDED_FILTERS else None

        @functools.wraps(function)
        def limited(*args: Any, **kwargs: Any) -> Any:
            budget = self.budget
            if budget is None:
                if signature is not None:
                    # Outside a rendering: Jinja folding a filter of constants while it compiles the template
                    # (`'%10000000000s' | format('x')`), with no budget to refuse it. Not folded, it runs when
                    # the template renders, in budget.
                    raise jinja2.nodes.Impossible()
                return function(*args, **kwargs)
            budget.check_time()
            if signature is not None:
                args, kwargs = check_filter(budget, name, signature, args, kwargs)
            result = function(*args, **kwargs)
            if isinstance(result, str):
                budget.check_size(len(result), f"the {name} filter's result")
            return result

        return limited


def make_environment(template_date: str = DEFAULT_TEMPLATE_DATE) -> LimitedEnvironment:
    env = LimitedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationTracker, jinja2.ext.loopcontrols],
    )
    fixed = datetime.fromisoformat(template_date)
    env.filters["tojson"] = _tojson
    env.limit_filters()
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = fixed.strftime
    env.globals["namespace"] = _TemplateNamespace
    env.globals["dict"] = dict
    return env
