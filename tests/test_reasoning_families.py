"""Reasoning traces, tool calls and stop sequences on the 2025-26 families (Qwen, DeepSeek, gpt-oss, GLM, Cohere):
every row verified or refused with a reason; what a written row counts is exactly the trained turn's reasoning,
answer, tool calls and stop sequence; across the rows of one record every reasoning trace trains exactly once.

Uses the family STYLE tokenizers of `scripts/style_tokenizers.py`, built from ../shared/realworld (skipped with
a reason when it is absent).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
from lossmask.errors import RecordError
from lossmask.pipeline.formats import parse
from lossmask.pipeline.formats.options import FormatOptions
from lossmask.pipeline.mask import MaskPolicy
from lossmask.pipeline.render import Renderer, RenderOptions
from lossmask.pipeline.templates import ChatTemplate
from lossmask.pipeline.tokenize import tokenize_batch
from lossmask.pipeline.tokenizer import load_tokenizer
from lossmask.schemas.classes import TokenClass
from lossmask.schemas.reasons import REJECT_REASONS
from lossmask.schemas.records import SourceRef

from .support import REALWORLD, ROOT, realworld

pytestmark = [realworld, pytest.mark.realworld]

TEMPLATES = REALWORLD / "templates"
# Each family's STYLE tokenizer serves every kit template of that family.
FAMILY_TEMPLATES: dict[str, re.Pattern[str]] = {
    "qwen3": re.compile(r"qwen|QwQ", re.IGNORECASE),
    "deepseek-r1": re.compile(r"DeepSeek-R1|deepseek-r1"),
    "deepseek-v3": re.compile(r"deepseekv3|deepseek_v3|DeepSeek-V3"),
    "gpt-oss": re.compile(r"gpt-?oss"),
    "glm4.5": re.compile(r"glm"),
    "cohere2": re.compile(r"cohere2|command_a|command-r7b"),
}
VISION = re.compile(r"_vl|qwen2_vl")  # image-text templates render content as parts; same text path

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def call(arguments: object) -> dict:
    return {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


# The reasoning set. Every reasoning trace and answer is a distinct sentence; prompt texts end in "?".
RECORDS: dict[str, dict] = {
    "think-in-content": {
        "messages": [
            {"role": "user", "content": "Is seventeen prime?"},
            {"role": "assistant", "content": "<think>\nSeventeen has no divisor.\n</think>\n\nYes, it is prime."},
        ]
    },
    "think-in-content, two turns": {
        "messages": [
            {"role": "user", "content": "Is seventeen prime?"},
            {"role": "assistant", "content": "<think>\nSeventeen has no divisor.\n</think>\n\nYes, it is prime."},
            {"role": "user", "content": "And nine?"},
            {"role": "assistant", "content": "<think>\nNine is three squared.\n</think>\n\nNo, nine is not."},
        ]
    },
    "reasoning_content on every turn": {
        "messages": [
            {"role": "system", "content": "Answer briefly?"},
            {"role": "user", "content": "Is seventeen prime?"},
            {"role": "assistant", "content": "Yes, it is prime.", "reasoning_content": "Seventeen has no divisor."},
            {"role": "user", "content": "And nine?"},
            {"role": "assistant", "content": "No, nine is not.", "reasoning_content": "Nine is three squared."},
        ]
    },
    "tool chain with reasoning, string arguments": {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "The user wants the weather.",
                "tool_calls": [call('{"city": "Paris"}')],
            },
            {"role": "tool", "tool_call_id": "call00001", "content": "sunny and mild?"},
            {"role": "assistant", "content": "It is sunny in Paris.", "reasoning_content": "The tool answered."},
        ],
    },
    "tool chain, object arguments": {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call({"city": "Paris"})]},
            {"role": "tool", "tool_call_id": "call00001", "content": "sunny and mild?"},
            {"role": "assistant", "content": "It is sunny in Paris."},
        ],
    },
}
REASONING = ["Seventeen has no divisor.", "Nine is three squared.", "The user wants the weather.", "The tool answered."]
ANSWERS = ["Yes, it is prime.", "No, nine is not.", "It is sunny in Paris."]
PROMPTS = ["Is seventeen prime?", "And nine?", "Weather in Paris?", "sunny and mild?", "Answer briefly?"]


def _load_style_module():
    spec = importlib.util.spec_from_file_location("style_tokenizers", ROOT / "scripts" / "style_tokenizers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def styles(tmp_path_factory) -> dict[str, Path]:
    return _load_style_module().build_styles(REALWORLD, tmp_path_factory.mktemp("styles"))


def family_cases() -> list[tuple[str, str]]:
    if not TEMPLATES.is_dir():
        return []
    cases = []
    for path in sorted(TEMPLATES.rglob("*.jinja")):
        name = str(path.relative_to(TEMPLATES))
        for family, pattern in FAMILY_TEMPLATES.items():
            if pattern.search(name) and not (family == "qwen3" and "deepseek" in name.lower()):
                cases.append((family, name))
                break
    return cases


CASES = family_cases()


DEFAULT_POLICY = MaskPolicy()


def render_record(styles, family: str, template_name: str, record: dict, policy: MaskPolicy = DEFAULT_POLICY):
    """(rows as (counted text, classes counted, flags), or the refusal's RecordError)."""
    info = load_tokenizer(str(styles[family]))
    source = (TEMPLATES / template_name).read_text(encoding="utf-8")
    info = info.for_template(source)
    template = ChatTemplate(template_name, source, dict(info.special_tokens))
    renderer = Renderer(template, info, RenderOptions(mask=policy))
    conversation = parse(record, SourceRef("family", 1), "openai", FormatOptions())
    try:
        examples = renderer.render(conversation)
    except RecordError as exc:
        return exc, renderer
    rows = []
    for result in tokenize_batch(info, examples):
        if isinstance(result, RecordError):
            return result, renderer
        counted = result.trainable[1:] == 1
        text = info.tokenizer.decode(result.ids[1:][counted].tolist(), skip_special_tokens=False)
        rows.append((text, {TokenClass(c) for c in result.classes[1:][counted]}, result.flags))
    return rows, renderer


@pytest.mark.parametrize(("family", "template_name"), CASES, ids=[name for _, name in CASES])
def test_every_row_is_verified_or_refused_with_a_reason(styles, family, template_name):
    for label, record in RECORDS.items():
        rows, renderer = render_record(styles, family, template_name, record)
        if isinstance(rows, RecordError):
            assert rows.reason in REJECT_REASONS, (template_name, label, rows.reason)
            continue
        assert rows, (template_name, label)
        counted = "".join(text for text, _, _ in rows)
        for prompt in PROMPTS:
            assert prompt not in counted, (template_name, label, prompt, counted)
        # Every answer and reasoning trace of the record trains exactly once across its rows (and nothing the
        # record does not hold): reasoning may be cut by a template that keeps it only in the last turn, but
        # then it trains in that turn's own row.
        texts = [m.get("content", "") for m in record["messages"] if m["role"] == "assistant"]
        texts += [m.get("reasoning_content", "") for m in record["messages"] if m["role"] == "assistant"]
        for sentence in [*ANSWERS, *REASONING]:
            held = any(sentence in t for t in texts)
            assert counted.count(sentence) == (1 if held else 0), (template_name, label, sentence, counted)
        stops = renderer.profile.stop_sequences + renderer.profile.eot_markers + renderer.tokenizer.stop_tokens
        for text, _, _ in rows:  # each row ends with what stops the model, unless the model stops on a header
            stripped = text.rstrip()
            assert any(stripped.endswith(stop) for stop in stops), (
                template_name,
                label,
                text,
            )


@pytest.mark.parametrize(("family", "template_name"), CASES, ids=[name for _, name in CASES])
def test_options_remove_their_class(styles, family, template_name):
    for label, record in RECORDS.items():
        for policy, removed, sentences in (
            (MaskPolicy(train_reasoning=False), TokenClass.REASONING, REASONING),
            (MaskPolicy(train_end_of_turn=False), TokenClass.END_OF_TURN, ()),
            (MaskPolicy(train_tool_calls=False), TokenClass.TOOL_CALL, ()),
        ):
            rows, _ = render_record(styles, family, template_name, record, policy)
            if isinstance(rows, RecordError):
                continue
            for text, classes, _ in rows:
                assert removed not in classes, (template_name, label, removed, text)
                for sentence in sentences:
                    assert sentence not in text, (template_name, label, sentence)
                if removed == TokenClass.TOOL_CALL:
                    assert "get_weather" not in text, (template_name, label, text)


def test_the_families_stop_sequences(styles):
    """The stop sequence each family's rows train: through the first token the model must emit to stop."""
    expected = {
        ("cohere2", "trl/cohere2.jinja"): "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
        ("qwen3", "llama.cpp/Qwen-Qwen3-0.6B.jinja"): "<|im_end|>",
        ("deepseek-r1", "llama.cpp/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"): "<｜end▁of▁sentence｜>",
        ("gpt-oss", "llama.cpp/openai-gpt-oss-120b.jinja"): "<|return|>",
    }
    record = RECORDS["think-in-content"]
    for (family, name), stop in expected.items():
        rows, _ = render_record(styles, family, name, record)
        assert not isinstance(rows, RecordError), (name, rows)
        assert all(text.endswith(stop) for text, _, _ in rows), (name, [t for t, _, _ in rows])


def test_glm_never_counts_a_second_answers_header(styles):
    record = {
        "messages": [
            {"role": "user", "content": "Is seventeen prime?"},
            {"role": "assistant", "content": "Yes, it is prime."},
            {"role": "assistant", "content": "No, nine is not."},
        ]
    }
    rows, _ = render_record(styles, "glm4.5", "trl/glm4moe.jinja", record)
    assert not isinstance(rows, RecordError), rows
    counted = "".join(text for text, _, _ in rows)
    assert "<|assistant|>" not in counted and counted.count("Yes, it is prime.") == 1, counted


def test_deepseek_r1_trains_reasoning_after_its_generation_prompt(styles):
    """R1's template cuts every think block; the turn trains as the model writes it after `<think>\\n`."""
    rows, _ = render_record(
        styles, "deepseek-r1", "llama.cpp/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", RECORDS["think-in-content"]
    )
    assert not isinstance(rows, RecordError), rows
    ((text, _, flags),) = rows
    assert text == "Seventeen has no divisor.\n</think>\n\nYes, it is prime.<｜end▁of▁sentence｜>"
    from lossmask.schemas.shards import RowFlag

    assert flags & RowFlag.REASONING_CONTINUED


def test_refusal_counts_per_family_are_reported(styles, capsys):
    """The numbers for the closing note: per family, rows verified and refusals by reason."""
    table: dict[str, Counter[str]] = {}
    for family, name in CASES:
        counts = table.setdefault(family, Counter())
        for record in RECORDS.values():
            rows, _ = render_record(styles, family, name, record)
            counts["refused:" + rows.reason if isinstance(rows, RecordError) else "verified"] += 1
    with capsys.disabled():
        for family, counts in table.items():
            print(f"\n{family}: {dict(counts)}")
    assert all(counts["verified"] for counts in table.values())


DATA = REALWORLD / "data" / "llamafactory"


@pytest.mark.parametrize(
    ("template", "escaped"),
    # Qwen3's template writes </think>, so inside an answer it is a control-token string, escaped as text; Qwen2.5's
    # does not, so there it is ordinary vocabulary (transformers' rule), encoded as the added token.
    [("llama.cpp/Qwen-Qwen3-0.6B.jinja", 2), ("llama.cpp/Qwen-Qwen2.5-7B-Instruct.jinja", None)],
)
def test_llamafactory_reasoning_and_tool_data_is_all_written(styles, tmp_path, template, escaped):
    """The kit's reason_tool_use_demo_50.jsonl and glaive_toolcall_en_demo.json on Qwen3 and Qwen2.5: every
    record written (reasoning parts, tool calls with object arguments, bare tool schemas, a stray `</think>`
    inside two answers)."""
    from .support import read_rows, run_prepare

    inputs = [DATA / "reason_tool_use_demo_50.jsonl", DATA / "glaive_toolcall_en_demo.json"]
    manifest, out = run_prepare(
        tmp_path, inputs, tokenizer=str(styles["qwen3"]), chat_template=str(TEMPLATES / template)
    )
    assert manifest["records"]["read"] == 350
    assert manifest["records"]["written"] == 350, manifest["records"]["by_reason"]
    assert manifest["records"]["row_flags"].get("special_escaped") == escaped
    assert all(row["num_loss_tokens"] > 0 for row in read_rows(out))


def test_mistral_tool_call_ids_are_generated_on_request(tmp_path):
    """Mistral v3 requires 9-character alphanumeric call ids; glaive's calls have none. The refusal names the
    rule and the fix; `--tool-call-ids generate` writes them."""
    from .support import read_rejects, run_prepare

    tokenizer = str(REALWORLD / "tokenizers" / "mistral-v3")
    data = [DATA / "glaive_toolcall_en_demo.json"]
    manifest, out = run_prepare(tmp_path, data, tokenizer=tokenizer, out_name="keep")
    reasons = manifest["records"]["by_reason"]["rejected"]
    assert reasons.get("tool_call_id_format") == 153, reasons  # every glaive record with a call
    hint = next(r for r in read_rejects(out) if r["reason"] == "tool_call_id_format")["hint"]
    assert "--tool-call-ids generate" in hint
    generated, _ = run_prepare(tmp_path, data, tokenizer=tokenizer, tool_call_ids="generate", out_name="generate")
    assert "tool_call_id_format" not in generated["records"]["by_reason"]["rejected"]
    assert generated["records"]["written"] == manifest["records"]["written"] + 153


@pytest.mark.parametrize(
    ("policy", "channels"),
    [
        (DEFAULT_POLICY, {"analysis", "commentary", "final"}),
        (MaskPolicy(train_reasoning=False), {"commentary", "final"}),
        (MaskPolicy(train_tool_calls=False), {"analysis", "final"}),
        (MaskPolicy(train_reasoning=False, train_tool_calls=False), {"final"}),
    ],
)
def test_gpt_oss_channels_train_by_their_class(styles, policy, channels):
    """Which gpt-oss harmony channels train is chosen by class (docs/prepare.md, "gpt-oss channels"): the
    analysis channel is reasoning (`--no-train-reasoning`), a commentary tool call is a tool call
    (`--no-train-tool-calls`), the final channel is the answer; every assistant channel trains by default."""
    rows, _ = render_record(
        styles, "gpt-oss", "trl/gptoss.jinja", RECORDS["tool chain with reasoning, string arguments"], policy
    )
    assert not isinstance(rows, RecordError), rows
    counted = "".join(text for text, _, _ in rows)
    evidence = {
        "analysis": "The user wants the weather." in counted and "The tool answered." in counted,
        "commentary": "get_weather" in counted and '{"city": "Paris"}' in counted,
        "final": "It is sunny in Paris." in counted,
    }
    assert {channel for channel, trained in evidence.items() if trained} == channels, counted
    if "analysis" not in channels:  # a channel left out counts none of its text, not only part of it
        assert "The user wants" not in counted and "The tool answered" not in counted, counted
    assert counted.rstrip().endswith("<|return|>"), counted
