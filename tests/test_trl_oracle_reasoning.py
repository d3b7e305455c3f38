"""Issue 11, TRL's oracle on reasoning and tool conversations.

For every kit `*_training.jinja` / original pair, on multi-turn conversations with reasoning (`reasoning_content`,
and a think block in the content) and a tool-call chain (tools, an assistant tool call, the tool result, the final
answer): transformers renders the training variant with `return_assistant_tokens_mask=True` (what TRL trains);
lossmask renders the ORIGINAL template (no tags), with `--unfaithful-turns as-rendered` and with `split`.

Per assistant turn, the answer, the reasoning trace, the tool call and the stop token must be the same tokens and
count on both sides. Everything else that differs must be one of the deliberate differences of docs/prepare.md
("Differences from TRL"; the names in `DIFFERENCES`), allowed per template in `ALLOWED`; each is pinned by a test
of its own below. The bugs it found are fixed; their tests are at the end.

Uses ../shared/realworld (skipped with a reason when absent) and transformers (skipped likewise).
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lossmask.errors import RecordError
from lossmask.pipeline.formats import parse
from lossmask.pipeline.formats.options import FormatOptions
from lossmask.pipeline.mask import MaskPolicy
from lossmask.pipeline.render import Renderer, RenderOptions
from lossmask.pipeline.templates import ChatTemplate
from lossmask.pipeline.templates.environment import DEFAULT_TEMPLATE_DATE
from lossmask.pipeline.tokenize import tokenize_batch
from lossmask.pipeline.tokenizer import TokenizerInfo, load_tokenizer
from lossmask.schemas.records import SourceRef
from lossmask.schemas.shards import RowFlag

from .kit import TEMPLATES, save_style_folder
from .support import realworld
from .test_reasoning_families import RECORDS as FAMILY_RECORDS
from .test_reasoning_families import TOOLS, call

pytestmark = [realworld, pytest.mark.realworld]
transformers = pytest.importorskip(
    "transformers", reason="transformers is the oracle (return_assistant_tokens_mask): pip install -e '.[dev]'"
)

TRL = TEMPLATES / "trl"
# The pairs by the original's name: trl/NAME.jinja and trl/NAME_training.jinja.
PAIRS = (
    sorted(
        p.name.removesuffix("_training.jinja")
        for p in TRL.glob("*_training.jinja")
        if (TRL / p.name.replace("_training", "")).is_file()
    )
    if TRL.is_dir()
    else []
)
POLICIES = ("as-rendered", "split")

# The conversations. Every reasoning trace, answer and prompt is a distinct sentence.
CALL = call({"city": "Paris"})  # object arguments, as Hugging Face templates take them
EARLIER_ANSWER = copy.deepcopy(FAMILY_RECORDS["reasoning_content on every turn"]["messages"][1:3])
CHAIN_WITH_REASONING = copy.deepcopy(FAMILY_RECORDS["tool chain with reasoning, string arguments"]["messages"])
CHAIN_WITH_REASONING[1]["tool_calls"] = [CALL]
# The reasoning set of test_reasoning_families (two answers, with reasoning_content and a system prompt, or with a
# think block at the start of the content), and a tool chain after an earlier answer.
THOUGHT_AND_YES = "<think>\nSeventeen has no divisor.\n</think>\n\nYes, it is prime."
THOUGHT_AND_NO = "<think>\nNine is three squared.\n</think>\n\nNo, nine is not."
RECORDS: dict[str, dict[str, Any]] = {
    "reasoning_content": copy.deepcopy(FAMILY_RECORDS["reasoning_content on every turn"]),
    "think-in-content": copy.deepcopy(FAMILY_RECORDS["think-in-content, two turns"]),
    "tool chain": {"tools": TOOLS, "messages": EARLIER_ANSWER + CHAIN_WITH_REASONING},
    "tool chain, no reasoning": copy.deepcopy(FAMILY_RECORDS["tool chain, object arguments"]),
}
# The same chain without the tool definitions (data that holds the calls only).
RECORDS["tool calls, no definitions"] = {"messages": RECORDS["tool chain, no reasoning"]["messages"]}
PARTS_TEMPLATES = ("llava_next", "idefics3")  # they take content as a list of parts

# What each family's model emits to end a turn (its stop tokens); the stop of a turn is the first run of them after
# the turn's last answer, reasoning or tool call.
STOPS: dict[str, tuple[str, ...]] = {
    "cohere": ("<|END_OF_TURN_TOKEN|>",),
    "cohere2": ("<|END_RESPONSE|>", "<|END_OF_TURN_TOKEN|>"),
    "deepseekv3": ("<｜end▁of▁sentence｜>",),
    "diffusion_gemma": ("<turn|>", "<|tool_response>"),
    "gemma": ("<end_of_turn>",),
    "gemma3": ("<end_of_turn>",),
    "glm4moe": ("<|user|>", "<|observation|>"),
    "gptoss": ("<|end|>", "<|return|>", "<|call|>"),
    "idefics3": ("<end_of_utterance>",),
    "llama3": ("<|eot_id|>",),
    "llava_next": ("</s>",),
    "phi3": ("<|end|>",),
    "phi3_5": ("<|end|>",),
}
IM_END = ("<|im_end|>",)  # the Qwen family, LFM2 and Nemotron 3

# The deliberate differences (docs/prepare.md ("Differences from TRL")), by name.
DIFFERENCES = {
    "prompt-text": "TRL counts text the generation prompt already holds (role header, `<think>\\n`, empty think block)",
    "after-stop": "TRL counts template text after the stop token",
    "reasoning-inlined": "the template ignores reasoning_content: lossmask writes it as a think block, TRL drops it",
    "history-as-rendered": "TRL's variant keeps a think block the original drops; as-rendered trains the original",
    "split-reasoning": "split trains, in the turn's own row, reasoning the full rendering (and TRL) leaves out",
    "think-converted": "a think block in the content becomes the template's own reasoning; TRL keeps the text",
    "split-return": "gpt-oss split rows end each turn with <|return|>, where TRL trains the historical <|end|>",
    "tool-call-stop": "the stop token after a tool call (`<|tool_response>`) counts; TRL's span ends before it",
    "header-after-tool": "template text the generation prompt does not supply (`<|turn>model\\n` after a tool result)",
    "tools-left-out": "the template leaves out tool calls or definitions: lossmask refuses, TRL trains without them",
}
# Text TRL counts at the start of a turn that the generation prompt already holds (difference "prompt-text").
PROMPT_TEXT: dict[str, tuple[str, ...]] = {
    "deepseekv3": ("<｜Assistant｜>", "<｜tool▁outputs▁end｜>"),
    "gptoss": ("<|start|>assistant",),
    "qwen2_5": ("\n",),
    # `<think>` alone where the token `\n\n` straddles the prompt's end (`<think>\n` + `\n</think>`): it counts whole
    "qwen3_5_think": ("<think>\n", "<think>"),
    "qwen3_6": ("<think>\n", "<think>"),
    "qwen3_5_nothink": ("<think>\n\n</think>\n\n", "<think>\n"),
    **{name: ("<think>\n", "<think>") for name in ("nemotron_3_nano", "nemotron_3_super", "nemotron_3_ultra")},
}
# Template text after the stop token that TRL's spans count (difference "after-stop").
NEWLINE_AFTER_STOP = (
    *("diffusion_gemma", "gemma", "gemma3", "idefics3", "lfm2", "nemotron_3_nano", "nemotron_3_super"),
    *("nemotron_3_ultra", "qwen2_5", "qwen2_5_vl", "qwen3", "qwen3_5_nothink", "qwen3_5_think", "qwen3_6"),
    *("qwen3_instruct_2507", "qwen3_vl"),
)
AFTER_STOP: dict[str, tuple[str, ...]] = {
    "phi3": ("\n", "\n</s>"),
    "phi3_5": ("\n", "\n</s>"),
    "llava_next": (" ",),
    **{name: ("\n",) for name in NEWLINE_AFTER_STOP},
}
# TRL's variants that keep every turn's think block, where the original keeps only those after the last user turn.
HISTORY_KEPT = ("qwen3", "qwen3_5_nothink", "qwen3_5_think", "qwen3_6")
EMPTY_THINK = "<think>\n\n</think>\n\n"
# Templates that render reasoning_content but do not split a think block out of the content themselves.
THINK_CONVERTED = ("diffusion_gemma", "gptoss", "nemotron_3_nano", "nemotron_3_super", "nemotron_3_ultra")
HEADER_AFTER_TOOL = {"diffusion_gemma": "<|turn>model\n"}
# Templates that leave out the tool calls or the tool definitions of the tool chains.
LEAVES_OUT_TOOLS = ("deepseekv3", "idefics3", "lfm2", "llama3", "phi3", "phi3_5", "qwen2_5_vl")
_SHARED = {"prompt-text", "after-stop"}
ALLOWED: dict[str, set[str]] = {
    "cohere": {"reasoning-inlined"},
    "cohere2": {"reasoning-inlined"},
    "deepseekv3": {"prompt-text", "reasoning-inlined", "split-reasoning", "tools-left-out"},
    "diffusion_gemma": {"after-stop", "split-reasoning", "think-converted", "tool-call-stop", "header-after-tool"},
    "gemma": {"after-stop", "reasoning-inlined"},
    "gemma3": {"after-stop", "reasoning-inlined"},
    "glm4moe": {"split-reasoning"},
    "gptoss": {"prompt-text", "split-reasoning", "think-converted", "split-return"},
    "idefics3": {"after-stop", "reasoning-inlined", "tools-left-out"},
    "lfm2": {"after-stop", "reasoning-inlined", "tools-left-out"},
    "llama3": {"reasoning-inlined", "tools-left-out"},
    "llava_next": {"after-stop", "reasoning-inlined"},
    **{name: _SHARED | {"split-reasoning", "think-converted"} for name in THINK_CONVERTED if "nemotron" in name},
    "phi3": {"after-stop", "reasoning-inlined", "tools-left-out"},
    "phi3_5": {"after-stop", "reasoning-inlined", "tools-left-out"},
    "qwen2_5": _SHARED | {"reasoning-inlined"},
    "qwen2_5_vl": {"after-stop", "reasoning-inlined", "tools-left-out"},
    "qwen3": {"after-stop", "history-as-rendered"},
    **{name: _SHARED | {"history-as-rendered"} for name in ("qwen3_5_nothink", "qwen3_5_think", "qwen3_6")},
    "qwen3_instruct_2507": {"after-stop", "reasoning-inlined"},
    "qwen3_vl": {"after-stop", "reasoning-inlined"},
}
# Cases that would fail the oracle because of a known lossmask bug (a strict xfail each); none today.
BUGS: dict[tuple[str, str, str], str] = {}  # none left: the three found here are fixed (see the end)


def source(name: str, training: bool = False) -> str:
    return (TRL / f"{name}{'_training' if training else ''}.jinja").read_text(encoding="utf-8")


def ignores_reasoning(name: str) -> bool:
    """The original template never reads the message's reasoning (no `reasoning_content`, `thinking`, ...)."""
    return not re.search(r"reasoning|thinking", source(name))


def has_tools(label: str) -> bool:
    return "tools" in RECORDS[label] or any(m.get("tool_calls") for m in RECORDS[label]["messages"])


def stops(name: str) -> tuple[str, ...]:
    return STOPS.get(name, IM_END)


def record(name: str, label: str) -> dict[str, Any]:
    out = copy.deepcopy(RECORDS[label])
    if name == "gemma":  # Gemma 1/2 templates raise on a system message
        out["messages"] = [m for m in out["messages"] if m["role"] != "system"]
    return out


def hf_messages(name: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if name.startswith(PARTS_TEMPLATES):
        return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    return messages


@dataclass(frozen=True)
class Kit:
    """A pair's tokenizer folder (the kit's STYLE tokenizer with both templates' markers), for both sides."""

    hf: Any
    info: TokenizerInfo


@pytest.fixture(scope="session")
def kits(tmp_path_factory) -> KitCache:
    return KitCache(tmp_path_factory.mktemp("trl-pairs"))


class KitCache:
    def __init__(self, root: Path):
        self.root = root
        self._kits: dict[str, Kit] = {}

    def __call__(self, name: str) -> Kit:
        if name not in self._kits:
            folder = save_style_folder(self.root / name, source(name), source(name, training=True))
            info = load_tokenizer(str(folder)).for_template(source(name))
            self._kits[name] = Kit(transformers.PreTrainedTokenizerFast.from_pretrained(str(folder)), info)
        return self._kits[name]


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    """lossmask pins strftime_now to one date (gpt-oss prints it); so must the oracle."""
    import transformers.utils.chat_template_utils as hf_templates

    class FrozenClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.fromisoformat(DEFAULT_TEMPLATE_DATE)

    monkeypatch.setattr(hf_templates, "datetime", FrozenClock)


# Where the segments are: the texts of each message, found in order in a rendering.


def segments_of(message: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """(kind, texts that mark it) in the order templates write them: reasoning, tool call, answer."""
    out: list[tuple[str, tuple[str, ...]]] = []
    content = message.get("content") or ""
    if message["role"] != "assistant":
        return [(message["role"], (content,))] if content else []
    if content.startswith("<think>"):
        thought, _, content = content.partition("</think>")
        out.append(("reasoning", (thought.removeprefix("<think>").strip("\n"),)))
        content = content.lstrip("\n")
    if message.get("reasoning_content"):
        out.append(("reasoning", (message["reasoning_content"],)))
    if message.get("tool_calls"):
        out.append(("tool_call", ("get_weather", "Paris")))  # from the function's name through its argument
    if content:
        out.append(("answer", (content,)))
    return out


def locate(text: str, messages: list[dict[str, Any]]) -> list[dict[str, tuple[int, int]]]:
    """Per message, the character span of each of its segments in `text` (segments not rendered are absent)."""
    position, found = 0, []
    for message in messages:
        spans: dict[str, tuple[int, int]] = {}
        for kind, marks in segments_of(message):
            start = text.find(marks[0], position)
            end = start
            for mark in marks:
                end = text.find(mark, end)
                if end < 0:
                    break
                end += len(mark)
            if start >= 0 and end >= 0:
                spans[kind] = (start, end)
                position = end
        found.append(spans)
    return found


@dataclass(frozen=True)
class Turn:
    """What one side counts of one assistant turn."""

    row: int
    flags: int
    counted: str  # the turn's counted tokens, decoded
    # answer / reasoning / tool_call: (ids inside it, the text of the tokens touching it, all of those counted)
    segments: dict[str, tuple[tuple[int, ...], str, bool]]
    stop: tuple[tuple[int, ...], bool] | None  # the stop token(s) after the turn's last segment, all counted
    lead: str  # counted text before the first segment
    middle: tuple[int, ...]  # counted ids from the first segment up to the stop
    trail: str  # counted text after the stop


def turns_of(
    name: str,
    text: str,
    ids: list[int],
    offsets: list[tuple[int, int]],
    counted: list[int],
    messages: list[dict[str, Any]],
    decode,
    token,
    row: int = 0,
    flags: int = 0,
) -> tuple[dict[int, Turn], list[int]]:
    """The turns a rendering counts tokens of, and the counted tokens outside every assistant turn."""
    located = locate(text, messages)
    bounds = [(min(a for a, _ in s.values()), max(b for _, b in s.values())) if s else None for s in located]
    stop_set = set(stops(name))
    turns: dict[int, Turn] = {}
    inside_turns: set[int] = set()
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not located[i]:
            continue
        low = max((b[1] for b in bounds[:i] if b), default=0)
        high = min((b[0] for b in bounds[i + 1 :] if b), default=len(text) + 1)  # tokens appended sit at len(text)
        region = [k for k in range(len(ids)) if low <= offsets[k][0] < high]
        inside_turns.update(region)
        if not any(counted[k] for k in region):
            continue
        segments, first, last = {}, len(ids), -1
        for kind, (a, b) in located[i].items():
            inner = [k for k in region if a <= offsets[k][0] and offsets[k][1] <= b and offsets[k][1] > offsets[k][0]]
            touching = [k for k in region if offsets[k][1] > a and offsets[k][0] < b]
            segments[kind] = (
                tuple(ids[k] for k in inner),
                decode([ids[k] for k in touching]),
                all(counted[k] for k in touching),
            )
            first, last = min(first, touching[0]), max(last, touching[-1])
        after = [k for k in region if k > last]
        stop_at = next((k for k in after if token(ids[k]) in stop_set), None)
        stop, stop_end = None, region[-1]
        if stop_at is not None:
            stop_end = stop_at
            while stop_end + 1 in region and token(ids[stop_end + 1]) in stop_set:
                stop_end += 1
            run = range(stop_at, stop_end + 1)
            stop = (tuple(ids[k] for k in run), all(counted[k] for k in run))
        middle_end = stop_at if stop_at is not None else stop_end + 1

        def text_of(ks):
            return decode([ids[k] for k in ks if counted[k]])

        turns[i] = Turn(
            row,
            flags,
            text_of(region),
            segments,
            stop,
            text_of([k for k in region if k < first]),
            tuple(ids[k] for k in region if first <= k < middle_end and counted[k]),
            text_of([k for k in region if k > stop_end]),
        )
    outside = [k for k in range(len(ids)) if counted[k] and k not in inside_turns]
    return turns, outside


# The two sides.


@functools.lru_cache(maxsize=512)
def _trl(kits: KitCache, name: str, label: str) -> tuple[dict[int, Turn], str] | str:
    import jinja2

    kit = kits(name)
    rec = record(name, label)
    messages = hf_messages(name, rec["messages"])
    options = {"chat_template": source(name, training=True), "tools": rec.get("tools")}
    try:
        out = kit.hf.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **options
        )
        text = kit.hf.apply_chat_template(messages, tokenize=False, **options)
    except jinja2.TemplateError as exc:
        return f"{type(exc).__name__}: {exc}"
    encoding = kit.hf(text, add_special_tokens=False, return_offsets_mapping=True)
    assert list(out["input_ids"]) == encoding["input_ids"], name
    decode = functools.partial(kit.hf.decode, skip_special_tokens=False)
    turns, _ = turns_of(
        name,
        text,
        encoding["input_ids"],
        encoding["offset_mapping"],
        list(out["assistant_masks"]),
        rec["messages"],
        decode,
        kit.hf.convert_ids_to_tokens,
    )
    return turns, text


def trl_turns(kits: KitCache, name: str, label: str) -> dict[int, Turn] | str:
    """TRL's view: the turns its assistant mask counts, or the template's error."""
    out = _trl(kits, name, label)
    return out if isinstance(out, str) else out[0]


@functools.lru_cache(maxsize=1024)
def _lossmask(
    kits: KitCache, name: str, label: str, policy: str, options: tuple[tuple[str, Any], ...] = ()
) -> tuple[dict[int, Turn], list[str]] | RecordError:
    kit = kits(name)
    info = kit.info
    template = ChatTemplate(f"{name}.jinja", source(name), dict(info.special_tokens))
    renderer = Renderer(template, info, RenderOptions(mask=MaskPolicy(unfaithful_turns=policy), **dict(options)))
    rec = record(name, label)
    try:
        examples = renderer.render(parse(rec, SourceRef(label, 1), "openai", FormatOptions()))
    except RecordError as exc:
        return exc
    results = tokenize_batch(info, examples)
    turns: dict[int, Turn] = {}
    texts = []
    decode = functools.partial(info.tokenizer.decode, skip_special_tokens=False)
    for example, result in zip(examples, results, strict=True):
        if isinstance(result, RecordError):
            return result
        encoding = info.tokenizer.encode(example.text, add_special_tokens=False)
        ids = result.ids.tolist()
        assert ids[: len(encoding.ids)] == encoding.ids, name  # then only an appended stop (GLM)
        offsets = list(encoding.offsets) + [(len(example.text), len(example.text))] * (len(ids) - len(encoding.ids))
        row, outside = turns_of(
            name,
            example.text,
            ids,
            offsets,
            result.trainable.tolist(),
            rec["messages"],
            decode,
            info.tokenizer.id_to_token,
            result.part,
            result.flags,
        )
        assert not outside, f"{name}: lossmask counts {decode([ids[k] for k in outside])!r} outside every turn"
        for i, turn in row.items():
            assert i not in turns, f"{name} {label} {policy}: turn {i} trains in two rows"
            turns[i] = turn
        texts.append(example.text)
    return turns, texts


def lossmask_turns(kits: KitCache, name: str, label: str, policy: str, **options: Any) -> dict[int, Turn] | RecordError:
    """lossmask's view: the turns its rows count (each turn in the one row that trains it), or the refusal."""
    out = _lossmask(kits, name, label, policy, tuple(sorted(options.items())))
    return out if isinstance(out, RecordError) else out[0]


# The comparison.


def compare(
    name: str, label: str, policy: str, message: dict[str, Any], trl: Turn, ours: Turn
) -> tuple[set[str], list[str]]:
    """(the deliberate differences this turn of `message` shows, what no deliberate difference explains)."""
    found: set[str] = set()
    problems: list[str] = []
    # Where a difference makes the turn's text differ by design, only its segments and stop are compared.
    reworded = reworded_by_design(name, label, message)
    only_ours, only_trl = set(ours.segments) - set(trl.segments), set(trl.segments) - set(ours.segments)
    if reworded is not None:
        found.add(reworded)
    elif only_ours == {"reasoning"} and not only_trl:
        reworded = "split-reasoning"
        if policy == "split" and ours.flags & RowFlag.SPLIT_TURN:
            found.add(reworded)
        else:
            problems.append("reasoning only lossmask counts")
    elif only_trl == {"reasoning"} and not only_ours:
        reworded = "history-as-rendered"
        if policy == "as-rendered" and name in HISTORY_KEPT:
            found.add(reworded)
        else:
            problems.append("reasoning only TRL counts")
    elif only_ours or only_trl:
        problems.append(f"segments: TRL {sorted(trl.segments)}, lossmask {sorted(ours.segments)}")
    for kind in sorted(set(trl.segments) & set(ours.segments)):
        (trl_ids, trl_text, trl_counted), (our_ids, our_text, our_counted) = trl.segments[kind], ours.segments[kind]
        # Where the text before a segment differs, its first token may take a space or not: then the segment's
        # text must agree; else its tokens.
        if trl_ids != our_ids and not (reworded and trl_text.strip() == our_text.strip()):
            problems.append(f"{kind}: different tokens")
        if not trl_counted or not our_counted:
            problems.append(f"{kind}: counted by TRL {trl_counted}, by lossmask {our_counted}")
    if ours.stop is None or not ours.stop[1]:
        problems.append("lossmask does not count the stop")
    elif trl.stop is None:
        problems.append("no stop in TRL's rendering")
    elif trl.stop != ours.stop:
        if trl.stop[0] == ours.stop[0] and not trl.stop[1] and name == "diffusion_gemma":
            found.add("tool-call-stop")
        elif name == "gptoss" and policy == "split" and ours.flags & RowFlag.SPLIT_TURN:
            found.add("split-return")
        else:
            problems.append(f"stop: TRL {trl.stop}, lossmask {ours.stop}")
    if reworded is None:
        if trl.lead != ours.lead:
            extra = trl.lead.removesuffix(ours.lead) if trl.lead.endswith(ours.lead) else None
            ours_extra = ours.lead.removesuffix(trl.lead) if ours.lead.endswith(trl.lead) else None
            if extra in PROMPT_TEXT.get(name, ()):
                found.add("prompt-text")
            elif extra == EMPTY_THINK and policy == "as-rendered" and name in HISTORY_KEPT:
                found.add("history-as-rendered")
            elif ours_extra is not None and ours_extra == HEADER_AFTER_TOOL.get(name):
                found.add("header-after-tool")
            else:
                problems.append(f"lead: TRL {trl.lead!r}, lossmask {ours.lead!r}")
        if trl.middle != ours.middle:
            problems.append(f"counted text differs: TRL {trl.counted!r}, lossmask {ours.counted!r}")
    if trl.trail != ours.trail:
        if not ours.trail and trl.trail in AFTER_STOP.get(name, ()):
            found.add("after-stop")
        else:
            problems.append(f"after the stop: TRL {trl.trail!r}, lossmask {ours.trail!r}")
    return found, problems


def reworded_by_design(name: str, label: str, message: dict[str, Any]) -> str | None:
    """The difference that makes lossmask render this turn's text unlike TRL, if one does."""
    if label == "think-in-content" and name in THINK_CONVERTED:
        return "think-converted"
    if message.get("reasoning_content") and ignores_reasoning(name):
        return "reasoning-inlined"
    return None


def differences(kits: KitCache, name: str, label: str, policy: str) -> tuple[set[str], list[str]]:
    """The deliberate differences a case shows, and the problems no deliberate difference explains."""
    trl = trl_turns(kits, name, label)
    ours = lossmask_turns(kits, name, label, policy)
    if isinstance(trl, str):  # the template refuses the conversation (roles, system message): so must lossmask
        if isinstance(ours, RecordError) and ours.reason in ("template_rule", "template_error"):
            return set(), []
        return set(), [f"TRL's template raises {trl}; lossmask: {ours if isinstance(ours, RecordError) else 'trains'}"]
    if isinstance(ours, RecordError):
        if name in LEAVES_OUT_TOOLS and has_tools(label) and ours.reason in LEFT_OUT_REASONS:
            return {"tools-left-out"}, []
        return set(), [f"lossmask refuses: {ours.reason}: {ours}"]
    found: set[str] = set()
    problems = []
    if set(trl) != set(ours):
        problems.append(f"turns: TRL counts {sorted(trl)}, lossmask {sorted(ours)}")
    for i in sorted(set(trl) & set(ours)):
        message = record(name, label)["messages"][i]
        turn_found, turn_problems = compare(name, label, policy, message, trl[i], ours[i])
        found |= turn_found
        problems += [f"turn {i}: {p}" for p in turn_problems]
    return found, problems


# A parts template given a tool-call turn with empty content gets an empty parts list, which Idefics3 indexes.
LEFT_OUT_REASONS = ("template_dropped_message", "template_error")


def case(name: str, label: str, policy: str) -> Any:
    bug = BUGS.get((name, label, policy))
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(name, label, policy, id=f"{name}-{label}-{policy}", marks=marks)


CASES = [case(name, label, policy) for name in PAIRS for label in RECORDS for policy in POLICIES]


@pytest.mark.parametrize(("name", "label", "policy"), CASES)
def test_answers_reasoning_tool_calls_and_stops_agree_with_trl(kits, name, label, policy):
    """Per turn: the same answer, reasoning, tool-call and stop tokens count on both sides; every other difference
    is a deliberate one that this template is known to show."""
    found, problems = differences(kits, name, label, policy)
    assert not problems, (name, label, policy, problems)
    assert found <= ALLOWED[name], (name, label, policy, found - ALLOWED[name])


def test_every_pair_is_checked_and_the_allowed_differences_are_exact(kits, capsys):
    """The table for docs/prepare.md ("Differences from TRL"): per pair, which deliberate differences show
    (ALLOWED is exact), which cases agree token for token, which both sides refuse; only known bugs fail."""
    assert set(ALLOWED) == set(PAIRS) and set().union(*ALLOWED.values()) == set(DIFFERENCES)
    failing = set()
    with capsys.disabled():
        print()
        for name in PAIRS:
            seen: set[str] = set()
            same, refused = [], []
            for label in RECORDS:
                for policy in POLICIES:
                    found, problems = differences(kits, name, label, policy)
                    seen |= found
                    if problems:
                        failing.add((name, label, policy))
                    elif isinstance(trl_turns(kits, name, label), str):
                        refused.append(f"{label}/{policy}")
                    elif not found:
                        same.append(f"{label}/{policy}")
            print(f"{name}: differences {sorted(seen)}; identical: {same}; both refuse: {refused}")
            assert seen == ALLOWED[name], (name, seen)
    assert failing == set(BUGS)


# Each deliberate difference, pinned on the templates that show it. `turn` is the assistant message's index.

ARGUMENTS_AS_STRING = ("deepseekv3",)  # the original concatenates `arguments`: it takes a JSON string


def hf_render(kits: KitCache, name: str, messages: list[dict[str, Any]], label: str, **options: Any) -> str:
    """transformers' rendering of the ORIGINAL template (the independent side of every check below)."""
    if name in ARGUMENTS_AS_STRING:
        messages = copy.deepcopy(messages)
        for message in messages:
            for tool_call in message.get("tool_calls") or []:
                tool_call["function"]["arguments"] = json.dumps(tool_call["function"]["arguments"])
    return kits(name).hf.apply_chat_template(
        hf_messages(name, messages),
        chat_template=source(name),
        tools=RECORDS[label].get("tools"),
        tokenize=False,
        **options,
    )


def both(kits: KitCache, name: str, label: str, policy: str, turn: int, **options: Any) -> tuple[Turn, Turn]:
    trl, ours = trl_turns(kits, name, label), lossmask_turns(kits, name, label, policy, **options)
    assert not isinstance(trl, str), trl
    assert not isinstance(ours, RecordError), ours
    return trl[turn], ours[turn]


def common_prefix(a: Any, b: Any) -> Any:
    n = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[:n]


# (template, record, policy, turn, the text TRL counts before lossmask's turn, GEN_PROMPT_MISMATCH); lossmask counts
# exactly TRL's counted text without it (and without what follows the stop).
HEADER_CASES = [
    ("gptoss", "tool chain, no reasoning", "as-rendered", 1, "<|start|>assistant", False),
    ("gptoss", "tool chain, no reasoning", "split", 3, "<|start|>assistant", False),
    ("deepseekv3", "tool calls, no definitions", "as-rendered", 1, "<｜Assistant｜>", True),
    ("deepseekv3", "tool calls, no definitions", "split", 3, "<｜tool▁outputs▁end｜>", True),
    ("qwen2_5", "tool chain, no reasoning", "as-rendered", 3, "\n", False),
]
THINK_PROMPT_CASES = [
    ("qwen3_5_think", "reasoning_content", "split", 2, "<think>\n", False),
    ("qwen3_6", "tool chain", "split", 5, "<think>\n", False),
    # the token `\n\n` holds the prompt's last character and the first one generated: it counts whole
    ("qwen3_5_think", "tool chain, no reasoning", "as-rendered", 3, "<think>", False),
    ("qwen3_5_nothink", "tool chain, no reasoning", "as-rendered", 3, EMPTY_THINK, False),
    ("qwen3_5_nothink", "reasoning_content", "as-rendered", 4, "<think>\n", True),
]
NEMOTRON_CASES = [  # the prompt ends `<think>\n`; a turn without reasoning is rendered `<think></think>`
    ("nemotron_3_nano", "reasoning_content", "as-rendered", 2, "<think>", True),
    ("nemotron_3_nano", "reasoning_content", "split", 4, "<think>\n", False),
    ("nemotron_3_ultra", "tool chain", "split", 3, "<think>\n", False),
]


@pytest.mark.parametrize(
    ("name", "label", "policy", "turn", "extra", "mismatch"), [*HEADER_CASES, *THINK_PROMPT_CASES, *NEMOTRON_CASES]
)
def test_trl_counts_text_the_generation_prompt_holds(kits, name, label, policy, turn, extra, mismatch):
    """[prompt-text] TRL's span starts at the role header (`<|start|>assistant`, `<｜Assistant｜>`), at the
    newline after it (Qwen2.5), or at the `<think>\\n` / empty think block that the generation prompt already
    holds (Qwen3.5/3.6, Nemotron 3); lossmask trains from the end of the generation prompt, or from where the
    prompt and the rendering part (flagged GEN_PROMPT_MISMATCH)."""
    trl, ours = both(kits, name, label, policy, turn)
    assert trl.counted == extra + ours.counted + trl.trail and trl.trail in ("", *AFTER_STOP.get(name, ()))
    assert bool(ours.flags & RowFlag.GEN_PROMPT_MISMATCH) == mismatch
    # transformers on the original: the generation prompt holds the extra text, up to where it parts from the turn
    messages = record(name, label)["messages"]
    prompt = hf_render(kits, name, messages[:turn], label, add_generation_prompt=True)
    rendering = hf_render(kits, name, messages if policy == "as-rendered" else messages[: turn + 1], label)
    # where they part: by characters, or by whole tokens (a token holding the prompt's last character and a
    # generated one counts, so the text before that token is what the prompt holds)
    hf = kits(name).hf
    tokens = common_prefix(
        hf(prompt, add_special_tokens=False)["input_ids"], hf(rendering, add_special_tokens=False)["input_ids"]
    )
    held = (common_prefix(prompt, rendering), hf.decode(tokens, skip_special_tokens=False))
    assert any(h.endswith(extra) for h in held), (held, extra)


AFTER_STOP_CASES = [
    ("qwen3", "tool chain", "split", 3, "\n",
     '<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
     '{"city": "Paris"}}\n</tool_call><|im_end|>'),
    ("lfm2", "think-in-content", "as-rendered", 3, "\n", THOUGHT_AND_NO + "<|im_end|>"),
    ("phi3", "think-in-content", "as-rendered", 1, "\n", THOUGHT_AND_YES + "<|end|>"),
    ("phi3_5", "think-in-content", "split", 3, "\n</s>", THOUGHT_AND_NO + "<|end|>"),
    ("llava_next", "think-in-content", "as-rendered", 1, " ", " " + THOUGHT_AND_YES + "</s>"),
    ("gemma", "think-in-content", "as-rendered", 3, "\n", THOUGHT_AND_NO + "<end_of_turn>"),
    ("diffusion_gemma", "reasoning_content", "as-rendered", 4, "\n",
     "<|channel>thought\nNine is three squared.\n<channel|>No, nine is not.<turn|>"),
    ("idefics3", "think-in-content", "split", 3, "\n", " " + THOUGHT_AND_NO + "<end_of_utterance>"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "label", "policy", "turn", "tail", "counted"), AFTER_STOP_CASES)
def test_trl_counts_template_text_after_the_stop(kits, name, label, policy, turn, tail, counted):
    """[after-stop] TRL's spans run past the stop token (the newline after `<|im_end|>`, `<end_of_turn>`,
    `<turn|>`; Phi-3's `\\n</s>` after the last `<|end|>`; LLaVA's space after `</s>`); the model never emits
    that text, so lossmask's turn ends with the stop token."""
    trl, ours = both(kits, name, label, policy, turn)
    assert ours.counted == counted and any(counted.endswith(stop) for stop in stops(name))
    assert trl.counted == counted + tail
    _, text = _trl(kits, name, label)
    stop = next(s for s in stops(name) if counted.endswith(s))
    assert stop + tail in text


IGNORING = [name for name in PAIRS if ignores_reasoning(name) and name != "deepseekv3"]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", IGNORING)
def test_reasoning_a_template_ignores_is_written_as_a_think_block(kits, name, policy):
    """[reasoning-inlined] these templates never read `reasoning_content`; transformers (so TRL) drops it,
    lossmask writes it into the content as `<think>\\n...\\n</think>\\n\\n` (`--reasoning-fallback inline`, the
    default) and trains it. With `--reasoning-fallback drop` lossmask counts what TRL counts."""
    label = "reasoning_content"
    messages = record(name, label)["messages"]
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        trl, inline = both(kits, name, label, policy, turn)
        _, drop = both(kits, name, label, policy, turn, reasoning_fallback="drop")
        block = f"<think>\n{message['reasoning_content']}\n</think>\n\n"
        assert block in inline.counted and message["reasoning_content"] not in trl.counted
        assert inline.counted.replace(block, "", 1) == drop.counted
        assert trl.counted in {f"{p}{drop.counted}{trl.trail}" for p in ("", *PROMPT_TEXT.get(name, ()))}


def test_deepseek_v3_cuts_the_think_block_lossmask_writes(kits):
    """[reasoning-inlined] on DeepSeek-V3, whose template keeps only the text after `</think>`: as-rendered trains
    what is left (`\\n\\n` + answer); split trains the turn as the model writes it after its generation prompt
    `<｜Assistant｜><think>\\n` (REASONING_CONTINUED); TRL, without the reasoning, counts the header + answer."""
    name, label, eos = "deepseekv3", "reasoning_content", "<｜end▁of▁sentence｜>"
    trl, as_rendered = both(kits, name, label, "as-rendered", 4)
    _, split = both(kits, name, label, "split", 4)
    _, drop = both(kits, name, label, "as-rendered", 4, reasoning_fallback="drop")
    assert trl.counted == f"<｜Assistant｜>No, nine is not.{eos}"
    assert as_rendered.counted == f"\n\nNo, nine is not.{eos}" and as_rendered.flags & RowFlag.UNFAITHFUL_TRAINED
    assert split.counted == f"Nine is three squared.\n</think>\n\nNo, nine is not.{eos}"
    assert split.flags & RowFlag.REASONING_CONTINUED
    assert drop.counted == f"No, nine is not.{eos}"
    prompt = hf_render(kits, name, record(name, label)["messages"][:4], label, add_generation_prompt=True)
    assert prompt.endswith("<｜Assistant｜><think>\n")


@pytest.mark.parametrize("name", HISTORY_KEPT)
def test_as_rendered_trains_the_original_rendering_not_trls_variant(kits, name):
    """[history-as-rendered] TRL's Qwen3/3.5/3.6 training variants write every turn's think block (to be prefix-
    preserving); the originals drop it before the last user message. as-rendered trains the original's rendering
    (no reasoning, UNFAITHFUL_TRAINED); split trains the turn with its reasoning, as generated, in its own row."""
    label, turn, thought = "reasoning_content", 2, "Seventeen has no divisor."
    messages = record(name, label)["messages"]
    assert thought not in hf_render(kits, name, messages, label)
    trl, as_rendered = both(kits, name, label, "as-rendered", turn)
    _, split = both(kits, name, label, "split", turn)
    assert thought in trl.counted and thought not in as_rendered.counted
    assert as_rendered.counted == "Yes, it is prime.<|im_end|>" and as_rendered.flags & RowFlag.UNFAITHFUL_TRAINED
    assert thought in split.counted and split.flags & RowFlag.SPLIT_TURN
    assert trl.counted in {f"{p}{split.counted}\n" for p in ("", *PROMPT_TEXT.get(name, ()))}


def test_as_rendered_qwen3_has_no_empty_think_block_before_the_last_answer(kits):
    """[history-as-rendered], without reasoning: Qwen3's training variant writes an empty think block on every
    turn; the original only on the last one, so an earlier tool call trains without it."""
    trl, ours = both(kits, "qwen3", "tool chain, no reasoning", "as-rendered", 1)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert ours.counted == call and trl.counted == EMPTY_THINK + call + "\n"
    _, split = both(kits, "qwen3", "tool chain, no reasoning", "split", 1)
    assert split.counted == EMPTY_THINK + call  # rendered last, as generated: the block is there


SPLIT_REASONING_CASES = [
    ("glm4moe", "reasoning_content", 2, "\n<think></think>\nYes, it is prime.<|user|>",
     "\n<think>Seventeen has no divisor.</think>\nYes, it is prime.<|user|>"),
    ("gptoss", "tool chain", 3,
     '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
     "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant to=functions.get_weather"
     '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'),
    ("nemotron_3_nano", "reasoning_content", 2, "<think></think>\nYes, it is prime.<|im_end|>\n",
     "Seventeen has no divisor.\n</think>\nYes, it is prime.<|im_end|>"),
    ("diffusion_gemma", "reasoning_content", 2, "Yes, it is prime.<turn|>\n",
     "<|channel>thought\nSeventeen has no divisor.\n<channel|>Yes, it is prime.<turn|>"),
    ("deepseekv3", "think-in-content", 1, "<｜Assistant｜>\n\nYes, it is prime.<｜end▁of▁sentence｜>",
     "Seventeen has no divisor.\n</think>\n\nYes, it is prime.<｜end▁of▁sentence｜>"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "label", "turn", "trl_counted", "counted"), SPLIT_REASONING_CASES)
def test_split_trains_reasoning_the_full_rendering_leaves_out(kits, name, label, turn, trl_counted, counted):
    """[split-reasoning] these templates (and TRL's variants of them) drop an earlier turn's reasoning; split
    trains that turn in a row of its own, rendered up to it, with its reasoning, as the model generates it."""
    trl, split = both(kits, name, label, "split", turn)
    thought = next(t for kind, (t,) in segments_of(record(name, label)["messages"][turn]) if kind == "reasoning")
    assert trl.counted == trl_counted and split.counted == counted and split.flags & RowFlag.SPLIT_TURN
    assert thought not in trl.counted
    if (name, label, "as-rendered") not in BUGS:
        assert thought not in both(kits, name, label, "as-rendered", turn)[1].counted
    messages = record(name, label)["messages"]
    as_last = hf_render(kits, name, messages[: turn + 1], label)
    if name == "deepseekv3":  # it cuts every think block; the generation prompt opens one for the model
        assert thought not in as_last and split.flags & RowFlag.REASONING_CONTINUED
        assert hf_render(kits, name, messages[:turn], label, add_generation_prompt=True).endswith("<think>\n")
    else:
        assert thought in as_last and thought not in hf_render(kits, name, messages, label)


def moved_to_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        content = message.get("content") or ""
        if message["role"] == "assistant" and content.startswith("<think>"):
            thought, _, answer = content.partition("</think>")
            message = {**message, "content": answer.lstrip("\n"), "reasoning_content": thought[7:].strip("\n")}
        out.append(message)
    return out


@pytest.mark.parametrize("name", THINK_CONVERTED)
def test_a_think_block_in_the_content_becomes_the_templates_reasoning(kits, name):
    """[think-converted] gpt-oss, Gemma (diffusion) and Nemotron 3 render `reasoning_content` but keep a think
    block in the content as text (TRL trains `<think>` in gpt-oss's final channel). lossmask moves the block into
    the message's reasoning: its rendering is transformers' rendering of the messages with `reasoning_content`,
    the model's own format, not of the messages as given."""
    label = "think-in-content"
    messages = record(name, label)["messages"]
    out = _lossmask(kits, name, label, "as-rendered")
    assert not isinstance(out, RecordError), out
    (text,) = out[1]
    assert text == hf_render(kits, name, moved_to_reasoning(messages), label)
    assert text != hf_render(kits, name, messages, label)
    trl, ours = both(kits, name, label, "as-rendered", 3)
    assert THOUGHT_AND_NO in trl.counted
    assert "Nine is three squared." in ours.counted and "<think>\nNine" not in ours.counted
    expected = {
        "gptoss": "<|channel|>analysis<|message|>Nine is three squared.<|end|><|start|>assistant<|channel|>final"
        "<|message|>No, nine is not.<|return|>",
        "nemotron_3_nano": "Nine is three squared.\n</think>\nNo, nine is not.<|im_end|>",
        "nemotron_3_ultra": "Nine is three squared.</think>No, nine is not.<|im_end|>",
    }
    assert ours.counted == expected.get(name, ours.counted)


def test_gpt_oss_split_rows_end_each_turn_with_return(kits):
    """[split-return] a gpt-oss turn rendered last ends with `<|return|>`, the token the model emits to stop; in
    its own row (split) it trains that, where TRL (and as-rendered) train the historical `<|end|>`."""
    name, label = "gptoss", "reasoning_content"
    trl, split = both(kits, name, label, "split", 2)
    _, as_rendered = both(kits, name, label, "as-rendered", 2)
    assert trl.counted == "<|start|>assistant<|channel|>final<|message|>Yes, it is prime.<|end|>"
    assert as_rendered.counted == "<|channel|>final<|message|>Yes, it is prime.<|end|>"
    assert split.counted == (
        "<|channel|>analysis<|message|>Seventeen has no divisor.<|end|><|start|>assistant<|channel|>final<|message|>"
        "Yes, it is prime.<|return|>"
    )
    assert hf_render(kits, name, record(name, label)["messages"][:3], label).endswith("Yes, it is prime.<|return|>")


@pytest.mark.parametrize("policy", POLICIES)
def test_the_stop_token_after_a_tool_call_counts(kits, policy):
    """[tool-call-stop] the Gemma (diffusion) template ends a tool call with `<|tool_response>`, where the model
    stops for the result; TRL's span ends before it, lossmask trains it."""
    name, label = "diffusion_gemma", "tool chain, no reasoning"
    trl, ours = both(kits, name, label, policy, 1)
    call = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
    assert trl.counted == call and ours.counted == call + "<|tool_response>"
    assert trl.stop is not None and not trl.stop[1]  # in TRL's rendering, not counted
    messages = record(name, label)["messages"]
    assert hf_render(kits, name, messages[:2], label).endswith(call + "<|tool_response>")


@pytest.mark.parametrize("policy", POLICIES)
def test_a_header_the_generation_prompt_does_not_supply_counts(kits, policy):
    """[header-after-tool] after a tool result the Gemma (diffusion) generation prompt adds nothing (it ends
    `<tool_response|>`), but the rendering opens the answer with `<|turn>model\\n`: the model must write it, so
    lossmask trains it; TRL's span starts after it."""
    name, label = "diffusion_gemma", "tool chain, no reasoning"
    trl, ours = both(kits, name, label, policy, 3)
    assert trl.counted == "It is sunny in Paris.<turn|>\n"
    assert ours.counted == "<|turn>model\nIt is sunny in Paris.<turn|>"
    messages = record(name, label)["messages"]
    prompt = hf_render(kits, name, messages[:3], label, add_generation_prompt=True)
    assert prompt.endswith("<tool_response|>")
    assert hf_render(kits, name, messages, label).startswith(prompt + "<|turn>model\nIt is sunny")


TOOL_LABELS = [label for label in RECORDS if has_tools(label)]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", [n for n in LEAVES_OUT_TOOLS if n != "deepseekv3"])
def test_templates_that_leave_out_tools_are_refused(kits, name, policy):
    """[tools-left-out] these templates render no tool calls or no tool definitions; transformers renders the
    conversation without them and TRL trains it, lossmask refuses the record (template_dropped_message; Idefics3
    fails on the empty content of the tool-call turn, template_error)."""
    for label in TOOL_LABELS:
        _, text = _trl(kits, name, label)
        assert '"Paris"' not in text or "Weather in a city" not in text  # the call or the definitions are missing
        ours = lossmask_turns(kits, name, label, policy)
        assert isinstance(ours, RecordError) and ours.reason in LEFT_OUT_REASONS, (name, label, ours)
        assert ours.reason == "template_error" or "tool" in str(ours)


def test_deepseek_v3_split_refuses_a_record_whose_tool_definitions_it_leaves_out(kits):
    """[tools-left-out] on DeepSeek-V3, which never renders `tools`: its split rows refuse the record."""
    _, text = _trl(kits, "deepseekv3", "tool chain")
    assert "Weather in a city" not in text
    ours = lossmask_turns(kits, "deepseekv3", "tool chain", "split")
    assert isinstance(ours, RecordError) and ours.reason == "template_dropped_message"
    assert "tool definitions" in str(ours)


# Bugs this oracle found, fixed: each test states what lossmask does now (they were strict xfails).


def test_gpt_oss_as_rendered_trains_a_tool_call_whose_analysis_the_template_drops(kits):
    """gpt-oss drops a tool call's analysis when a final answer follows; the call itself is rendered (and TRL trains
    it). lossmask as-rendered finds no end of that turn (`<|call|>` is no probed stop, and the search for a stop
    stops where the rendering parts from the turn rendered last, i.e. at the dropped analysis), so it reports the
    tool calls as left out and refuses the record. It should train the call as rendered, like the same turn
    without reasoning."""
    name, label = "gptoss", "tool chain"
    trl = trl_turns(kits, name, label)
    assert not isinstance(trl, str)
    call = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
    assert trl[3].counted == "<|start|>assistant" + call
    ours = lossmask_turns(kits, name, label, "as-rendered")
    assert not isinstance(ours, RecordError), f"refused: {ours}"
    assert ours[3].counted == call and ours[3].flags & RowFlag.UNFAITHFUL_TRAINED


@pytest.mark.parametrize("label", ["tool chain", "tool chain, no reasoning"])
def test_a_template_that_never_renders_tool_definitions_is_refused_under_every_policy(kits, label):
    """DeepSeek-V3's template has no `tools` at all: every record with tools loses its definitions. A tool call
    writes the function's name, so the definitions are looked for outside the turns: refused under every policy."""
    _, text = _trl(kits, "deepseekv3", label)
    assert "Weather in a city" not in text
    for policy in POLICIES:
        ours = lossmask_turns(kits, "deepseekv3", label, policy)
        assert isinstance(ours, RecordError), f"{policy}: trained"
        assert ours.reason == "template_dropped_message" and "tool definitions" in str(ours)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_turn_never_starts_inside_a_control_token(kits, policy):
    """DeepSeek-V3's generation prompt ends `<｜Assistant｜><think>\\n`; a tool-call turn is rendered
    `<｜Assistant｜><｜tool▁calls▁begin｜>`. The counted tokens are right (the split token counts whole), but the
    turn's first character is placed after the `<` of `<｜tool▁calls▁begin｜>`: its `<` is labeled role header,
    and the row was flagged STRADDLE although no token mixes trained and untrained text. The start snaps to the
    control token's boundary."""
    _, ours = both(kits, "deepseekv3", "tool calls, no definitions", policy, 1)
    assert ours.counted.startswith("<｜tool▁calls▁begin｜>")
    assert not ours.flags & RowFlag.STRADDLE
