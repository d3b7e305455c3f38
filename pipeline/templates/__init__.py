"""Chat templates: the model's own Jinja template (from `tokenizer_config.json`), a file, or a built-in name."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.runtime import new_context

from ...errors import RecordError, SetupError
from .environment import DEFAULT_TEMPLATE_DATE, TemplateRule, make_environment
from .limits import Budget, LimitExceeded, RenderLimits, alarm

BUILTIN_NAMES = ("chatml", "llama3", "mistral", "gemma", "phi3", "zephyr", "alpaca")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_TOOL_CALL_ID = re.compile(r"tool.?call.?id", re.IGNORECASE)


def builtin_source(name: str) -> str:
    return resources.files(__package__).joinpath("builtin", f"{name}.jinja").read_text(encoding="utf-8")


@dataclass
class ChatTemplate:
    """A compiled chat template plus the variables a Hugging Face tokenizer passes to it (bos_token, ...).

    Every rendering has a budget (`limits`): it takes at most `limits.timeout` seconds and makes at most
    `limits.max_chars` characters, or the record is refused (`template_timeout`, `template_output_too_large`)."""

    name: str
    source: str
    variables: dict[str, Any] = field(default_factory=dict)
    template_date: str = DEFAULT_TEMPLATE_DATE
    limits: RenderLimits = field(default_factory=RenderLimits)

    def __post_init__(self) -> None:
        self._env = make_environment(self.template_date)
        try:
            self._compiled = self._env.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise SetupError(f"chat template {self.name}: syntax error on line {exc.lineno}: {exc.message}") from None
        self._globals = dict(self._compiled.globals)
        self.has_generation_tags = bool(_GENERATION_TAG.search(self.source))
        self.sha256 = hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        """`variables`: the record's own template variables, over the job's."""
        return self._generate(messages, add_generation_prompt, tools, variables, [])

    def render_tracked(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> tuple[str, list[tuple[int, int]]]:
        """The rendering and the character spans of its `{% generation %}` blocks."""
        blocks: list[str] = []
        spans: list[tuple[int, int]] = []
        self._env.generation_state = (blocks, spans)  # type: ignore[attr-defined]
        try:
            text = self._generate(messages, add_generation_prompt, tools, variables, blocks)
        finally:
            self._env.generation_state = None  # type: ignore[attr-defined]
        return text, spans

    def _generate(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
        variables: dict[str, Any] | None,
        blocks: list[str],
    ) -> str:
        """Render into `blocks` (which the generation tracker reads as it goes) within the budget; the text."""
        budget = Budget(self.limits)
        size = 0
        self._env.budget = budget
        try:
            with alarm(budget):
                for block in self._compiled.root_render_func(
                    self._context(messages, add_generation_prompt, tools, variables)
                ):
                    size += len(block)
                    budget.check_size(size, "the rendering")
                    blocks.append(block)
        except LimitExceeded as exc:
            raise RecordError(exc.reason, f"{self.name}: {exc.detail}") from None
        except Exception as exc:  # a template can raise anything; to us it is one bad record
            raise self._record_error(exc) from None
        finally:
            self._env.budget = None
        return "".join(blocks)

    def _context(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
        variables: dict[str, Any] | None,
    ) -> Any:
        """What `jinja2.Template.generate` builds, with the template's globals merged into a plain dict once per
        template instead of once per call (Jinja copies a ChainMap of them for every rendering: a few percent of a
        job)."""
        return new_context(
            self._env,
            self._compiled.name,
            self._compiled.blocks,
            {
                **self._globals,
                **self.variables,
                **(variables or {}),
                "messages": messages,
                "tools": tools,
                "documents": None,
                "add_generation_prompt": add_generation_prompt,
            },
            shared=True,
            globals=self._compiled.globals,
        )

    def _record_error(self, exc: Exception) -> RecordError:
        """What the template raised, as the reason a record is refused. A rule the template states itself
        (`raise_exception`) is named as such; Mistral's rule on tool-call ids has a fix of its own."""
        if isinstance(exc, TemplateRule):
            reason = "tool_call_id_format" if _TOOL_CALL_ID.search(str(exc)) else "template_rule"
            return RecordError(reason, f"{self.name}: {exc}")
        if isinstance(exc, RecursionError):  # its message depends on the stack depth; keep the detail stable
            return RecordError("template_error", f"{self.name}: RecursionError: the template recursed too deeply")
        return RecordError("template_error", f"{self.name}: {type(exc).__name__}: {exc}")


def resolve_template_source(spec: str | None, tokenizer_template: str | None, tokenizer_path: str) -> tuple[str, str]:
    """(name, Jinja source) for `--chat-template` = a file, a built-in name, or None for the tokenizer's own."""
    if spec is None:
        if tokenizer_template is None:
            raise SetupError(
                f"the tokenizer at {tokenizer_path} has no chat_template; pass --chat-template with a .jinja file "
                f"or one of: {', '.join(BUILTIN_NAMES)}"
            )
        return f"tokenizer:{tokenizer_path}", tokenizer_template
    path = Path(spec)
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    if spec in BUILTIN_NAMES:
        return f"builtin:{spec}", builtin_source(spec)
    raise SetupError(
        f"--chat-template {spec!r} is neither a file nor a built-in template (built-ins: {', '.join(BUILTIN_NAMES)})"
    )
