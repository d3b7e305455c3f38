"""Probe the chat template itself with a small plain conversation, the way a careful user would by hand.

- prefix-stable: render(msgs[:2]) is a prefix of render(msgs[:4]); when it is not, an earlier turn is rendered
  one way while it is the last turn (as at inference) and another way once more turns follow (Qwen3 drops the
  empty <think> block, Phi-3 appends EOS after the last turn, gpt-oss ends the last turn with <|return|>).
- generation prompt: for every assistant turn, render(msgs[:i], add_generation_prompt=True), the text the
  model reads at inference before writing turn i, is a prefix of the training rendering.
- every message appears: the text of each message is in the rendering (Mistral v3 templates drop the system
  prompt when the conversation ends with an assistant turn).
- BOS: whether the template writes BOS and the tokenizer's post-processor would add another one when the
  rendered text is encoded with `add_special_tokens=True` (lossmask encodes without, other tools may not).

The data-level consequences are in the row flags; these probes say what the template does at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import RecordError
from ..pipeline.templates import ChatTemplate
from ..pipeline.tokenizer import TokenizerInfo

SYSTEM = {"role": "system", "content": "You are a concise assistant."}
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Germany?"},
    {"role": "assistant", "content": "Berlin."},
]


@dataclass
class TemplateCheck:
    name: str  # prefix_stable, generation_prompt, keeps_messages, bos
    status: str  # "ok", "problem", or "note" (worth knowing, not a problem for lossmask's shards)
    detail: str


@dataclass
class TemplateReport:
    name: str
    end_of_turn_markers: list[str] = field(default_factory=list)
    checks: list[TemplateCheck] = field(default_factory=list)

    def check(self, name: str) -> TemplateCheck | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _render(template: ChatTemplate, messages: list[dict[str, Any]], generation: bool = False) -> str | None:
    try:
        return template.render(messages, add_generation_prompt=generation)
    except RecordError:
        return None


def _divergence(shorter: str, longer: str) -> str:
    """Where two renderings part, as two short quoted excerpts."""
    at = next(
        (i for i, (a, b) in enumerate(zip(shorter, longer, strict=False)) if a != b), min(len(shorter), len(longer))
    )
    return f"at char {at}: {shorter[max(0, at - 12) : at + 24]!r} vs {longer[max(0, at - 12) : at + 24]!r}"


def _conversations(template: ChatTemplate) -> list[tuple[str, list[dict[str, Any]]]]:
    """The plain conversation, and the same with a system prompt when the template accepts one."""
    out = [("", TURNS)]
    if _render(template, [SYSTEM, *TURNS]) is not None:
        out.append((" (with a system prompt)", [SYSTEM, *TURNS]))
    return out


def check_template(
    template: ChatTemplate, tokenizer: TokenizerInfo | None, end_of_turn_markers: list[str] | None = None
) -> TemplateReport:
    report = TemplateReport(template.name, list(end_of_turn_markers or []))
    conversations = _conversations(template)
    if _render(template, TURNS) is None:
        report.checks.append(TemplateCheck("renders", "problem", "the template fails on a plain user/assistant chat"))
        return report

    problems = []
    for label, messages in conversations:
        first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant") + 1
        short, full = _render(template, messages[:first_answer]), _render(template, messages)
        if short is not None and full is not None and not full.startswith(short):
            problems.append(
                f"render(msgs[:{first_answer}]) is not a prefix of render(msgs[:{len(messages)}]){label}, "
                + _divergence(short, full)
            )
    report.checks.append(
        TemplateCheck(
            "prefix_stable",
            "problem" if problems else "ok",
            "; ".join(problems) or "earlier turns render the same when more turns follow",
        )
    )

    problems = []
    for label, messages in conversations:
        full = _render(template, messages)
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or full is None:
                continue
            prompt = _render(template, messages[:i], generation=True)
            if prompt is not None and not full.startswith(prompt):
                problems.append(
                    f"assistant turn {i}{label}: the inference prompt differs, " + _divergence(prompt, full)
                )
    report.checks.append(
        TemplateCheck(
            "generation_prompt",
            "problem" if problems else "ok",
            "; ".join(problems) or "each assistant turn follows exactly the prompt add_generation_prompt=True gives",
        )
    )

    problems = []
    for label, messages in conversations:
        full = _render(template, messages) or ""
        lost = [m["role"] for m in messages if m["content"] not in full]
        if lost:
            problems.append(f"{', '.join(lost)} message text missing from the rendering{label}")
    report.checks.append(
        TemplateCheck(
            "keeps_messages", "problem" if problems else "ok", "; ".join(problems) or "every message's text is rendered"
        )
    )

    if tokenizer is not None:
        report.checks.append(_bos_check(template, tokenizer))
    return report


def _bos_check(template: ChatTemplate, tokenizer: TokenizerInfo) -> TemplateCheck:
    bos, bos_id = tokenizer.special_tokens.get("bos_token"), tokenizer.bos_id
    text = _render(template, TURNS) or ""
    if not bos or bos_id is None:
        return TemplateCheck("bos", "ok", "the tokenizer has no BOS token")
    writes = text.startswith(bos)
    adds = tokenizer.tokenizer.encode("x", add_special_tokens=True).ids[:1] == [bos_id]
    if writes and adds:
        return TemplateCheck(
            "bos",
            "note",
            f"the template writes {bos} and the tokenizer's post-processor adds another one: lossmask encodes the "
            "rendering with add_special_tokens=False (one BOS); a tool that encodes it with the default doubles it",
        )
    if writes or adds:
        return TemplateCheck("bos", "ok", f"{bos} is written by the {'template' if writes else 'tokenizer'} only")
    return TemplateCheck("bos", "ok", f"neither the template nor the tokenizer writes {bos}")
