"""Template behaviours that make span-finding hard, each with the smallest template that shows it."""

from __future__ import annotations

from lossmask.pipeline.render import Renderer, RenderOptions
from lossmask.pipeline.templates import ChatTemplate
from lossmask.pipeline.tokenize import tokenize_batch
from lossmask.schemas.classes import TokenClass
from lossmask.schemas.records import Conversation, Message, SourceRef
from lossmask.schemas.shards import RowFlag

from .support import builtin_setup

# Like Mistral v3: the system prompt is written only inside the LAST user message, so the prompt the model gets
# at inference ([INST] SYS\n\nQ[/INST]) is not a prefix of a training rendering that ends with the answer.
SYSTEM_IN_LAST_USER = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'user' %}[INST] {% if loop.last and messages[0].role == 'system' %}"
    "{{ messages[0].content }}\n\n{% endif %}{{ m.content }}[/INST]"
    "{% elif m.role == 'assistant' %} {{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
)


def counted_text(info, result) -> str:
    return info.tokenizer.decode(result.ids[1:][result.trainable[1:] == 1].tolist(), skip_special_tokens=False)


def test_a_mismatched_inference_prompt_never_trains_prompt_markup():
    info, _ = builtin_setup("mistral")
    template = ChatTemplate("system-in-last-user", SYSTEM_IN_LAST_USER, {"bos_token": "<s>", "eos_token": "</s>"})
    info = info.for_template(SYSTEM_IN_LAST_USER)
    conversation = Conversation(
        [Message("system", "Be brief."), Message("user", "Capital of France?"), Message("assistant", "Paris.")],
        SourceRef("case", 1),
    )
    renderer = Renderer(template, info, RenderOptions(dropped_messages="keep"))
    (example,) = renderer.render(conversation)
    assert example.flags & RowFlag.MESSAGE_DROPPED and example.flags & RowFlag.GEN_PROMPT_MISMATCH
    (result,) = tokenize_batch(info, [example])
    assert counted_text(info, result).strip() == "Paris.</s>"
    inst_end = info.tokenizer.token_to_id("[/INST]")
    assert all(not t for i, t in zip(result.ids, result.trainable, strict=True) if i == inst_end)


def test_the_first_answer_token_after_a_space_is_assistant_text():
    """A token like `▁Paris` holds the space the template writes after [/INST] and the answer's first word: it
    trains, and takes the class of most of its trained characters, the answer's, not markup."""
    info, template = builtin_setup("mistral")
    conversation = Conversation([Message("user", "Capital?"), Message("assistant", "Paris.")], SourceRef("case", 1))
    (example,) = Renderer(template, info, RenderOptions()).render(conversation)
    (result,) = tokenize_batch(info, [example])
    tokens = [info.tokenizer.decode([int(i)]) for i in result.ids]
    first_word = next(k for k, t in enumerate(tokens) if "Paris" in t)
    assert result.trainable[first_word] and TokenClass(result.classes[first_word]) == TokenClass.ASSISTANT
