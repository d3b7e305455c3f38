"""Preference data: pairs for DPO (`preference`) and judged single answers for KTO (`kto`).

`preference`, TRL's shapes (every field name can be remapped with `fields:`):

    {"prompt": "...", "chosen": "...", "rejected": "..."}                    raw text: no chat template
    {"prompt": [messages], "chosen": [messages], "rejected": [messages]}     conversational
    {"chosen": [messages], "rejected": [messages]}                           implicit prompt: each side whole

In the implicit shape the prompt is the messages both sides share from the start, and it must end right before
an assistant message on both sides (`preference_prompt_mismatch` otherwise): the pair then says which answer to
that prompt is better. A string `prompt` beside whole conversations (UltraFeedback's binarized data repeats the
user's message there) is read the way TRL reads it, as the implicit shape. Raw-text sides need a prompt field:
where a prompt ends inside text is not guessed (`preference_no_prompt`). The kit's StackExchange-paired data is
`fields: {prompt: question, chosen: response_j, rejected: response_k}`.

`kto`, an answer judged on its own: LLaMA-Factory's `{"messages": [...], "label": true}` (the judged answer is
the last message, an assistant one; every message before it is prompt) or TRL's unpaired `{"prompt",
"completion", "label"}`. The label must be a boolean; it is what tells the format from plain chat.

Both are formats of their own because they make rows of their own (`schemas.preference`), read through
`parse_preference`. An SFT job reads them through `PARSERS` too: a pair is rejected there (`preference_record`:
which side would it train?), and a KTO record is read as the conversation it holds, exactly as `openai` or
`prompt_completion` would read it, label unused, the way LLaMA-Factory's `sft` stage reads a KTO file.
"""

from __future__ import annotations

from typing import Any

from ...errors import RecordError
from ...schemas.records import Message, PreferenceExample, PreferencePair, PromptCompletion, Record, SourceRef
from .common import as_list, as_str, parse_template_kwargs, parse_tools, require
from .openai import parse as parse_openai
from .openai import parse_message
from .options import FormatOptions
from .prompt_completion import parse as parse_prompt_completion


def parse(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> PreferencePair:
    pf, cf, rf = options.field("prompt"), options.field("chosen"), options.field("rejected")
    chosen, rejected = require(value, cf), require(value, rf)
    prompt = value.get(pf)
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            raise RecordError("preference_no_prompt", f"{cf!r} and {rf!r} are strings and there is no {pf!r}", field=pf)
        pair = PreferencePair(as_str(prompt, pf), chosen, rejected, source)
        _check_text_sides(pair, cf, rf)
        return pair
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise RecordError(
            "wrong_type",
            f"{cf!r} and {rf!r} must both be strings or both be message lists, "
            f"got {type(chosen).__name__} and {type(rejected).__name__}",
            field=cf,
        )
    chosen_messages = _messages(chosen, cf, options)
    rejected_messages = _messages(rejected, rf, options)
    if isinstance(prompt, list):
        prompt_messages = _messages(prompt, pf, options)
    else:
        prompt_messages, chosen_messages, rejected_messages = split_shared_prompt(chosen_messages, rejected_messages)
    for message in prompt_messages:
        message.train = False  # the prompt is context on both sides, whatever weights the data gave it
    _check_message_sides(chosen_messages, rejected_messages, cf, rf)
    kwargs_field = options.field("template_kwargs")
    return PreferencePair(
        prompt=prompt_messages,
        chosen=chosen_messages,
        rejected=rejected_messages,
        source=source,
        tools=parse_tools(value.get(options.field("tools")), options.field("tools")),
        template_kwargs=parse_template_kwargs(value.get(kwargs_field), kwargs_field),
    )


def split_shared_prompt(
    chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen completion, rejected completion) of two whole conversations: the prompt is the longest run
    of equal messages from the start, and both completions must begin with an assistant message right after it."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == len(chosen) == len(rejected):
        raise RecordError("preference_identical_sides", f"both sides are the same {shared} messages")
    if shared in (len(chosen), len(rejected)):
        side = "chosen" if shared == len(chosen) else "rejected"
        raise RecordError("preference_empty_side", f"{side} is the first {shared} messages of the other side")
    if shared == 0 or chosen[shared].role != "assistant" or rejected[shared].role != "assistant":
        roles = f"{chosen[shared].role} and {rejected[shared].role}"
        raise RecordError(
            "preference_prompt_mismatch", f"the sides share {shared} messages, then differ at {roles} messages"
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]


def parse_kto(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> PreferenceExample:
    label_field = options.field("label")
    label = require(value, label_field)
    if not isinstance(label, bool):
        raise RecordError(
            "wrong_type", f"{label_field} must be a boolean, got {type(label).__name__}", field=label_field
        )
    record = parse_kto_as_sft(value, source, options)
    if isinstance(record, PromptCompletion):
        if not record.completion:
            raise RecordError("preference_empty_side", f"{options.field('completion')!r} is empty")
        return PreferenceExample(record, label, source)
    answer = record.messages[-1]
    if answer.role != "assistant" or answer.train is False or (not answer.content and not answer.tool_calls):
        what = f"a {answer.role} message" if answer.role != "assistant" else "empty or marked not to train"
        raise RecordError("preference_empty_side", f"the last message, the answer KTO judges, is {what}")
    if options.field("messages") in value:
        for message in record.messages[:-1]:
            message.train = False  # the label judges the last answer; everything before it is its prompt
    return PreferenceExample(record, label, source)


def parse_kto_as_sft(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> Record:
    """The record a KTO example holds, read as its SFT format reads it (`openai`, or `prompt_completion`)."""
    if options.field("messages") in value:
        return parse_openai(value, source, options)
    return parse_prompt_completion(value, source, options)


def reject_in_sft(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> Record:
    """An SFT job's reading of a preference pair: none."""
    raise RecordError(
        "preference_record", f"the record has {options.field('chosen')!r} and {options.field('rejected')!r}"
    )


def _messages(value: Any, where: str, options: FormatOptions) -> list[Message]:
    return [parse_message(m, f"{where}[{i}]", options) for i, m in enumerate(as_list(value, where))]


def _check_text_sides(pair: PreferencePair, cf: str, rf: str) -> None:
    for name, side in ((cf, pair.chosen), (rf, pair.rejected)):
        if not side:
            raise RecordError("preference_empty_side", f"{name!r} is empty", field=name)
    if pair.chosen == pair.rejected:
        raise RecordError("preference_identical_sides", f"{cf!r} and {rf!r} are the same text", field=rf)


def _check_message_sides(chosen: list[Message], rejected: list[Message], cf: str, rf: str) -> None:
    for name, side in ((cf, chosen), (rf, rejected)):
        if not side:
            raise RecordError("preference_empty_side", f"{name!r} has no messages", field=name)
        if side[0].role != "assistant":
            raise RecordError(
                "preference_prompt_mismatch", f"{name!r} begins with a {side[0].role} message", field=name
            )
    if chosen == rejected:
        raise RecordError("preference_identical_sides", f"{cf!r} and {rf!r} are the same messages", field=rf)
