"""Property tests over random conversations, on every built-in template.

Prompt text (system, user) is drawn from lowercase letters and assistant text from capitals and digits, so
"no prompt token trains" is checked on the decoded text itself, independently of lossmask's token classes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lossmask.pipeline.render import Renderer, RenderOptions
from lossmask.pipeline.tokenize import tokenize_batch
from lossmask.schemas.classes import GENERATED_CLASSES, TokenClass
from lossmask.schemas.records import Conversation, Message, SourceRef

from .support import BUILTIN_SPECIALS, builtin_setup

PROMPT_ALPHABET = "abcdefghijklmnop qrstuvwxyz,?\n"
ANSWER_ALPHABET = "ABCDEFGHIJKLMNOP QRSTUVWXYZ0123456789.!\né😀"
prompt_text = st.text(PROMPT_ALPHABET, min_size=1, max_size=40).filter(lambda s: s.strip())
answer_text = st.text(ANSWER_ALPHABET, min_size=1, max_size=40).filter(lambda s: s.strip())


@st.composite
def conversations(draw: st.DrawFn, with_system: bool = True) -> Conversation:
    messages = []
    if with_system and draw(st.booleans()):
        messages.append(Message("system", draw(prompt_text)))
    for _ in range(draw(st.integers(1, 3))):
        messages.append(Message("user", draw(prompt_text)))
        messages.append(Message("assistant", draw(answer_text), train=draw(st.sampled_from([None, None, False]))))
    return Conversation(messages, SourceRef("random", 1))


SETUPS = {name: builtin_setup(name) for name in BUILTIN_SPECIALS}
RENDERERS = {name: Renderer(template, info, RenderOptions()) for name, (info, template) in SETUPS.items()}
MARKERS = re.compile(
    "|".join(re.escape(t) for spec in BUILTIN_SPECIALS.values() for t in spec["tokens"])
    + r"|<\|im_end\|>|<\|endoftext\|>"
)


def tokenized(name: str, conversation: Conversation):
    info, _ = SETUPS[name]
    examples = RENDERERS[name].render(conversation)
    results = tokenize_batch(info, examples)
    for result in results:
        assert not isinstance(result, Exception), result
    return info, results


@pytest.mark.parametrize("name", sorted(BUILTIN_SPECIALS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_counted_targets_are_exactly_the_trained_answers(name, data):
    conversation = data.draw(conversations(with_system=True))
    info, results = tokenized(name, conversation)
    trained_answers = [m.content for m in conversation.messages if m.role == "assistant" and m.train is not False]
    counted_text = ""
    for example in results:
        counted = example.ids[1:][example.trainable[1:] == 1]
        classes = example.classes[1:][example.trainable[1:] == 1]
        assert set(map(int, classes)) <= {int(c) for c in GENERATED_CLASSES}
        counted_text += info.tokenizer.decode(counted.tolist(), skip_special_tokens=False)
    prose = MARKERS.sub("", counted_text)
    assert not re.search(r"[a-z]", prose), f"prompt text trains: {counted_text!r}"
    squeeze = "".join
    assert squeeze(prose.split()) == squeeze("".join(trained_answers).split())
    if trained_answers:  # every trained turn ends with its template's end-of-turn marker, which trains
        eot = sum(int(((e.classes == TokenClass.END_OF_TURN) & (e.trainable == 1)).sum()) for e in results)
        assert eot >= len(trained_answers)


@settings(max_examples=60, deadline=None)
@given(conversation=conversations())
def test_chatml_counted_text_is_exactly_answer_plus_end_of_turn(conversation):
    info, results = tokenized("chatml", conversation)
    (example,) = results
    counted = example.ids[1:][example.trainable[1:] == 1].tolist()
    expected = "".join(
        m.content + "<|im_end|>" for m in conversation.messages if m.role == "assistant" and m.train is not False
    )
    assert info.tokenizer.decode(counted, skip_special_tokens=False) == expected


@settings(max_examples=30, deadline=None)
@given(conversation=conversations())
def test_rendering_and_masks_are_deterministic(conversation):
    _, first = tokenized("llama3", conversation)
    fresh_info, fresh_template = builtin_setup("llama3")
    fresh = Renderer(fresh_template, fresh_info, RenderOptions())
    second = tokenize_batch(fresh_info, fresh.render(conversation))
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.trainable, b.trainable)
        assert np.array_equal(a.classes, b.classes)
