"""Every real template in the kit yields verified masks or a clear refusal; TRL's generation-tag masks agree.

Uses ../shared/realworld (skipped with a reason when absent).
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from lossmask.errors import RecordError, SetupError
from lossmask.pipeline.mask import MaskPolicy
from lossmask.pipeline.render import Renderer, RenderOptions
from lossmask.pipeline.templates import ChatTemplate
from lossmask.pipeline.templates.environment import DEFAULT_TEMPLATE_DATE
from lossmask.pipeline.tokenize import tokenize_batch
from lossmask.pipeline.tokenizer import load_tokenizer
from lossmask.schemas.classes import GENERATED_CLASSES, TokenClass
from lossmask.schemas.reasons import REJECT_REASONS
from lossmask.schemas.records import Conversation, Message, SourceRef
from lossmask.schemas.shards import RowFlag

from .kit import BOS, EOS, TEMPLATES, kit_templates, save_style_folder, style_info
from .support import realworld

pytestmark = [realworld, pytest.mark.realworld]

SYSTEM = "You are a concise assistant."
TURNS = [
    ("user", "What is the capital of France?"),
    ("assistant", "The capital of France is Paris."),
    ("user", "And of Germany?"),
    ("assistant", "Berlin."),
]
ANSWERS = [text for role, text in TURNS if role == "assistant"]
KIT = kit_templates()
# Refusals we expect, by template and reason; anything else must verify.
EXPECTED_REFUSALS = {
    "template_rule": re.compile(r"gemma|tokenizer_config_gemma"),  # "System role not supported"
    "template_error": re.compile(r"tool_use"),  # tools required
    "template_dropped_message": re.compile(r"mistral_v2v3|mistral_v3_tekken|Mistral-Nemo|pixtral"),
}


def conversation(system: bool) -> Conversation:
    messages = ([Message("system", SYSTEM)] if system else []) + [Message(role, text) for role, text in TURNS]
    return Conversation(messages, SourceRef("kit", 1))


def outcome(name: str, source: str, system: bool) -> tuple[str, str]:
    """('verified', detail) or ('refused', reason) for one template and conversation."""
    info = style_info(source)
    try:
        template = ChatTemplate(name, source, {"bos_token": BOS, "eos_token": EOS})
        renderer = Renderer(template, info, RenderOptions())
        examples = renderer.render(conversation(system))
    except SetupError as exc:
        return "setup", str(exc)
    except RecordError as exc:
        return "refused", exc.reason
    results = tokenize_batch(info, examples)
    errors = [r for r in results if isinstance(r, RecordError)]
    if errors:
        return "refused", errors[0].reason
    trained = ""
    for result in results:
        counted = result.trainable[1:] == 1
        if not result.flags & RowFlag.GENERATION_TAGS:  # with tags, the template itself says what trains
            assert set(map(int, result.classes[1:][counted])) <= {int(c) for c in GENERATED_CLASSES}, name
        trained += info.tokenizer.decode(result.ids[1:][counted].tolist(), skip_special_tokens=False)
    # Both answers train, and no prompt text does (the questions and the system prompt end in "?" or ".").
    assert all(answer in trained for answer in ANSWERS), (name, trained)
    assert "capital of France?" not in trained and "Germany?" not in trained and SYSTEM not in trained, (name, trained)
    return "verified", trained


@pytest.mark.parametrize(("name", "source"), KIT, ids=[name for name, _ in KIT])
def test_every_kit_template_verifies_or_refuses_clearly(name, source):
    for system in (False, True):
        kind, detail = outcome(name, source, system)
        if kind == "verified":
            continue
        if kind == "setup":
            assert "firefunction" in name and "functions" in detail, detail  # needs a `functions` variable
            continue
        assert detail in REJECT_REASONS
        assert EXPECTED_REFUSALS.get(detail) and EXPECTED_REFUSALS[detail].search(name), (name, system, detail)


def test_kit_summary_counts():
    """The numbers reported for the kit: how many templates verify, and why the others are refused."""
    counts: Counter[str] = Counter()
    for name, source in KIT:
        for system in (False, True):
            kind, detail = outcome(name, source, system)
            counts[kind if kind != "refused" else f"refused:{detail}"] += 1
    print("\nkit templates x (no system, system):", dict(counts))
    assert counts["verified"] >= 220  # 121 templates x 2; the rest are the expected refusals above


# TRL's *_training.jinja variants mark assistant spans with {% generation %}; transformers turns those into
# `assistant_masks`. lossmask, given the ORIGINAL template (no tags), must train the same content and
# end-of-turn tokens, and its token ids must equal `apply_chat_template(tokenize=True)` of the original.
TRL_PAIRS = sorted(
    (p.name, p.name.replace("_training", ""))
    for p in (TEMPLATES / "trl").glob("*_training.jinja")
    if (TEMPLATES / "trl" / p.name.replace("_training", "")).is_file()
)
PARTS_TEMPLATES = ("llava_next", "idefics3")


def hf_messages(name: str, system: bool) -> list[dict]:
    messages = ([{"role": "system", "content": SYSTEM}] if system else []) + [
        {"role": r, "content": t} for r, t in TURNS
    ]
    if name.startswith(PARTS_TEMPLATES):
        messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    return messages


def turn_tokens(
    text: str, offsets: list[tuple[int, int]], ids: list[int], control: set[int]
) -> dict[str, tuple[list[int], int]]:
    """For each answer the text holds: (token indices of its content, index of the first control token after)."""
    found, position = {}, 0
    for answer in ANSWERS:
        start = text.find(answer, position)
        if start < 0:
            break  # a split row renders the conversation only up to an earlier turn
        end = start + len(answer)
        inside = [k for k, (a, b) in enumerate(offsets) if a >= start and b <= end and b > a]
        after = next((k for k, (a, _) in enumerate(offsets) if a >= end and ids[k] in control), -1)
        found[answer] = (inside, after)
        position = end
    return found


@pytest.mark.parametrize("policy", ["as-rendered", "split"])
@pytest.mark.parametrize(("training", "original"), TRL_PAIRS, ids=[p[0] for p in TRL_PAIRS])
def test_masks_agree_with_trl_generation_tags(tmp_path: Path, training: str, original: str, policy: str, monkeypatch):
    """`as-rendered` trains the rendering as it is, like TRL: content and end-of-turn tokens must match exactly.
    `split` (the default) trains each unfaithful turn as generated at inference: same content tokens, and an
    end-of-turn token that trains, which for gpt-oss is <|return|> where TRL trains the historical <|end|>."""
    transformers = pytest.importorskip("transformers")
    import transformers.utils.chat_template_utils as hf_templates

    class FrozenClock(datetime.datetime):  # lossmask pins strftime_now to one date; so must the oracle
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.fromisoformat(DEFAULT_TEMPLATE_DATE)

    monkeypatch.setattr(hf_templates, "datetime", FrozenClock)
    training_src = (TEMPLATES / "trl" / training).read_text(encoding="utf-8")
    original_src = (TEMPLATES / "trl" / original).read_text(encoding="utf-8")
    folder = save_style_folder(tmp_path / "tok", original_src, training_src)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    info = load_tokenizer(str(folder))
    control = set(info.control_ids)
    template = ChatTemplate(original, original_src, {"bos_token": BOS, "eos_token": EOS})
    renderer = Renderer(template, info, RenderOptions(mask=MaskPolicy(unfaithful_turns=policy)))
    system = "gemma" not in original  # Gemma 1/2 templates raise on a system message
    messages = hf_messages(original, system)

    # transformers on the training variant: its assistant mask, token by token
    out = hf.apply_chat_template(
        messages, chat_template=training_src, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trl_text = hf.apply_chat_template(messages, chat_template=training_src, tokenize=False)
    trl_offsets = hf(trl_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert list(out["input_ids"]) == hf(trl_text, add_special_tokens=False)["input_ids"]
    trl_mask = list(out["assistant_masks"])
    trl_turns = turn_tokens(trl_text, trl_offsets, list(out["input_ids"]), control)

    # lossmask on the original: the row that trains each answer
    conv = conversation(system)
    examples = renderer.render(conv)
    results = tokenize_batch(info, examples)
    ours: dict[str, tuple[list[int], int, np.ndarray, np.ndarray, int]] = {}
    for example, result in zip(examples, results, strict=True):
        assert not isinstance(result, RecordError), result
        encoding = info.tokenizer.encode(example.text, add_special_tokens=False)
        for answer, (inside, after) in turn_tokens(example.text, encoding.offsets, encoding.ids, control).items():
            if inside and all(result.trainable[k] for k in inside):
                assert answer not in ours, f"{original}: {answer!r} trains in two rows"
                ours[answer] = (inside, after, result.ids, result.trainable, result.flags)
        # token ids equal transformers' apply_chat_template(tokenize=True) of the original, for the messages rendered
        count = len(conv.messages) - sum(1 for a in ANSWERS if a not in example.text) * 2
        expected = list(hf.apply_chat_template(messages[:count], tokenize=True, return_dict=True)["input_ids"])
        if result.flags & RowFlag.STOP_APPENDED:  # GLM: the stop the model must emit, which the template omits
            expected.append(int(result.ids[-1]))
            assert info.tokenizer.id_to_token(expected[-1]) in {"<|user|>", "<|observation|>"}, original
        assert result.ids.tolist() == expected, original
    assert set(ours) == set(ANSWERS), f"{original}: lossmask trained {sorted(ours)}"

    for answer, (trl_inside, trl_after) in trl_turns.items():
        inside, after, ids, trainable, flags = ours[answer]
        assert all(trl_mask[k] for k in trl_inside), f"{training} does not train the answer"
        assert [out["input_ids"][k] for k in trl_inside] == [int(ids[k]) for k in inside]  # same content tokens
        if trl_after >= 0 and trl_mask[trl_after]:  # TRL trains an end-of-turn token after the answer
            if after >= 0:
                assert trainable[after], f"{original}: lossmask does not train the end-of-turn token"
                if policy == "as-rendered" or not flags & RowFlag.SPLIT_TURN:
                    assert int(ids[after]) == out["input_ids"][trl_after]
            else:  # only the training variant writes it (GLM appends <|user|> after the final turn); so do we
                assert flags & RowFlag.STOP_APPENDED and trainable[-1] and int(ids[-1]) == out["input_ids"][trl_after]


REASONED = [
    ("user", "What is the capital of France?", None),
    ("assistant", "The capital of France is Paris.", "France's capital is Paris."),
    ("user", "And of Germany?", None),
    ("assistant", "Berlin.", "Germany's capital is Berlin."),
]


@pytest.mark.parametrize(
    ("option", "removed"),
    [
        ({"train_end_of_turn": False}, TokenClass.END_OF_TURN),
        ({"train_reasoning": False}, TokenClass.REASONING),
        ({"train_tool_calls": False}, TokenClass.TOOL_CALL),
    ],
    ids=["no-train-eot", "no-train-reasoning", "no-train-tool-calls"],
)
def test_each_option_removes_its_class_on_every_kit_template(option, removed):
    """--no-train-eot, --no-train-reasoning and --no-train-tool-calls on all 121 templates, with generation tags
    or without: no counted target of the removed class, on a conversation with reasoning on every answer."""
    checked = 0
    for name, source in KIT:
        info = style_info(source)
        try:
            template = ChatTemplate(name, source, {"bos_token": BOS, "eos_token": EOS})
            renderer = Renderer(template, info, RenderOptions(mask=MaskPolicy(**option)))
            messages = [Message(role, text, reasoning=thought) for role, text, thought in REASONED]
            examples = renderer.render(Conversation(messages, SourceRef("kit", 1)))
        except (SetupError, RecordError):
            continue
        for result in tokenize_batch(info, examples):
            if isinstance(result, RecordError):
                continue
            counted = {TokenClass(c) for c in result.classes[1:][result.trainable[1:] == 1]}
            assert removed not in counted, (name, removed)
            checked += 1
    assert checked >= 140  # rows of the 110 or so templates that render this conversation (143 when written)
