"""The lints on the real cases of ../shared/realworld: Mistral's dropped system prompt, double-BOS tokenizers,
and templates that are not prefix-stable (Qwen3, Phi-3). Skipped with a reason when the kit is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_testkit import LESSON, audit_sample, fired, realworld, write_jsonl

pytestmark = pytest.mark.realworld

SYSTEM = {"role": "system", "content": "You are a concise assistant."}
TWO_TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Germany?"},
    {"role": "assistant", "content": "Berlin."},
]


def tokenizer(name: str) -> str:
    return str(realworld("tokenizers", name))


def template(path: str) -> str:
    return str(realworld("templates", path))


def test_mistral_drops_the_system_prompt(tmp_path: Path) -> None:
    """Mistral v3's template writes the system prompt only into the last user turn: a conversation that ends with
    the assistant loses it. Rejected by default (counted as records), kept as rows with --dropped-messages keep,
    where the context of the turn also differs from what the model sees at inference."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [SYSTEM, *LESSON]}, {"messages": TWO_TURNS}])
    rejected = audit_sample([data], tokenizer=tokenizer("mistral-v3"))
    lint = fired(rejected)["message-dropped"]
    assert (lint.rows, lint.records) == (0, 1)
    assert lint.examples[0].source.endswith("d.jsonl:1") and "template_dropped_message" in lint.examples[0].detail
    keeps = rejected.template.check("keeps_messages")  # type: ignore[union-attr]
    assert keeps is not None and keeps.status == "problem" and "system" in keeps.detail

    kept = audit_sample([data], tokenizer=tokenizer("mistral-v3"), dropped_messages="keep")
    assert (fired(kept)["message-dropped"].rows, fired(kept)["message-dropped"].records) == (1, 0)
    assert fired(kept)["context-mismatch"].rows == 1

    clean = audit_sample([write_jsonl(tmp_path / "c.jsonl", [{"messages": TWO_TURNS}])], tokenizer("mistral-v3"))
    assert fired(clean) == {}


@pytest.mark.parametrize("name", ["mistral-v3", "mistral-nemo-tekken", "llama3-style", "gemma-style"])
def test_double_bos_tokenizers(name: str, tmp_path: Path) -> None:
    """These templates write BOS and their post-processors add one too. lossmask's chat rows have one BOS (the
    template check says why); text that already holds a BOS string gets a second one from the post-processor
    when control strings are allowed, and the lint fires on that row only."""
    folder = tokenizer(name)
    bos_text = {"llama3-style": "<|begin_of_text|>"}.get(name, "<s>")
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": LESSON}])
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": f"{bos_text}Pre-rendered text keeps its BOS."}])
    report = audit_sample([chat, text], tokenizer=folder, special_tokens_in_content="allow", view={"rows": [0, 1]})
    bos_id = report.source.tokenizer.bos_id  # type: ignore[union-attr]
    assert report.source.tokenizer.special_tokens["bos_token"] == bos_text  # type: ignore[union-attr]
    chat_row, text_row = report.shown
    assert chat_row.tokens[0].id == bos_id and chat_row.tokens[1].id != bos_id
    assert text_row.tokens[0].id == text_row.tokens[1].id == bos_id
    lint = fired(report)["double-bos"]
    assert lint.rows == 1 and [e.row for e in lint.examples] == [1]
    check = report.template.check("bos")  # type: ignore[union-attr]
    assert check is not None and check.status == "note" and "add_special_tokens=False" in check.detail


def test_qwen3_is_not_prefix_stable_and_lossmask_splits_its_turns(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": TWO_TURNS}, {"messages": LESSON}])
    qwen3 = template("llama.cpp/Qwen-Qwen3-0.6B.jinja")
    report = audit_sample([data], tokenizer=tokenizer("smollm2"), chat_template=qwen3)
    lint = fired(report)["template-not-prefix-stable"]
    assert lint.rows == 2  # the two-turn conversation became one row per turn context
    assert lint.template is not None and "<think>" in lint.template
    assert "context-mismatch" not in fired(report)

    as_rendered = audit_sample(
        [data], tokenizer=tokenizer("smollm2"), chat_template=qwen3, unfaithful_turns="as-rendered"
    )
    assert fired(as_rendered)["context-mismatch"].rows == 1  # trained in a rendering unlike inference

    stable = audit_sample(
        [data], tokenizer=tokenizer("smollm2"), chat_template=template("llama.cpp/Qwen-Qwen2.5-7B-Instruct.jinja")
    )
    assert fired(stable) == {}


def test_phi3_is_not_prefix_stable(tmp_path: Path) -> None:
    """Phi-3.5 appends EOS after the last turn only; the template check names where the renderings part."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": LESSON}])
    report = audit_sample(
        [data],
        tokenizer=tokenizer("phi3-style"),
        chat_template=template("llama.cpp/microsoft-Phi-3.5-mini-instruct.jinja"),
    )
    lint = fired(report)["template-not-prefix-stable"]
    assert lint.rows == 0 and lint.template is not None
    assert "<|endoftext|>" in lint.template and "<|user|>" in lint.template
    assert set(fired(report)) == {"template-not-prefix-stable"}


def test_real_data_through_a_real_template_is_clean(tmp_path: Path) -> None:
    """No false alarms: LLaMA-Factory's chat data with a Llama-3 template trips none of the token lints."""
    data = str(realworld("data", "llamafactory", "kto_en_demo.json"))
    report = audit_sample([data], tokenizer=tokenizer("llama3-style"), sample=300)
    assert report.stats.rows == 300
    assert fired(report) == {}
