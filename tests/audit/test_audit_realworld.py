"""The lints on the real cases of ../shared/realworld: Mistral's dropped system prompt, double-BOS tokenizers,
and templates that are not prefix-stable (Qwen3, Phi-3). Skipped with a reason when the kit is absent."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from audit_testkit import LESSON, ROOT, audit_sample, fired, function_tool, realworld, write_jsonl
from lossmask.schemas.classes import TokenClass

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


# Reasoning and tool calls on the 2025-26 families, with the family STYLE tokenizers of scripts/style_tokenizers.py.
FAMILY_NAMES = ("qwen3", "deepseek-r1", "deepseek-v3", "gpt-oss", "glm4.5", "cohere2")
WEATHER = function_tool("get_weather", "Weather in a city", city="string")
REASONING_DATA = [
    {
        "messages": [
            {"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "It is 5.", "reasoning_content": "Two plus three makes five."},
            {"role": "user", "content": "And 3 plus 4?"},
            {"role": "assistant", "content": "It is 7.", "reasoning_content": "Three plus four makes seven."},
        ]
    },
    {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "I should call the tool.",
                "tool_calls": [
                    {
                        "id": "call00001",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call00001", "content": "Sunny, 20C"},
            {"role": "assistant", "content": "It is sunny in Paris.", "reasoning_content": "The tool said sunny."},
        ],
    },
]


@pytest.fixture(scope="module")
def styles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The family STYLE folders, built from the kit by the project's own script (run as a file: scripts/ is no
    package)."""
    kit = realworld("tokenizers", "smollm2").parents[1]
    script = runpy.run_path(str(ROOT / "scripts" / "style_tokenizers.py"))
    return script["build_styles"](kit, tmp_path_factory.mktemp("styles"))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reasoning_families_learn_their_classes_and_the_reasoning_lint(
    family: str, styles: dict[str, Path], tmp_path: Path
) -> None:
    """Each family writes reasoning the default run trains; --no-train-reasoning fires reasoning-never-trained
    on exactly the rows that read reasoning; --no-train-tool-calls makes no turn look unended or empty."""
    data = write_jsonl(tmp_path / "d.jsonl", REASONING_DATA)
    folder = str(styles[family])
    trained = audit_sample([data], tokenizer=folder)
    assert "reasoning-never-trained" not in fired(trained)
    classes = {c.label: (c.positions, c.counted) for c in trained.stats.classes}
    assert classes["reasoning"][1] > 0 and classes["end_of_turn"][1] > 0

    untrained = audit_sample([data], tokenizer=folder, train_reasoning=False)
    lint = fired(untrained)["reasoning-never-trained"]
    table = untrained.source.frame.select("token_class").collect()["token_class"].to_list()
    reading = [row for row, tokens in enumerate(table) if TokenClass.REASONING in tokens]
    reasoning = {c.label: (c.positions, c.counted) for c in untrained.stats.classes}["reasoning"]
    assert reasoning == (classes["reasoning"][0], 0)
    assert lint.rows == len(reading) > 0 and [e.row for e in lint.examples] == reading[: len(lint.examples)]
    assert lint.breakdown == {"reasoning token(s) in the context, none counted": reasoning[0]}
    assert set(fired(untrained)) - {"reasoning-never-trained"} == set(fired(trained))

    no_calls = audit_sample([data], tokenizer=folder, train_tool_calls=False)
    assert set(fired(no_calls)) <= set(fired(trained)), family
