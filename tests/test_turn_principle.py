"""One principle for the assistant turn, on the smallest templates that test it (fixture tokenizer, no kit):
a turn trains exactly what the model emits at inference, from the end of the generation prompt through its stop
sequence; never the generation prompt's header, never a following message's header; template markers that are
no tokens stop the job; per-record template variables reach the template."""

from __future__ import annotations

import json

import pytest
from lossmask.errors import SetupError
from lossmask.pipeline.render import Renderer, RenderOptions
from lossmask.pipeline.templates import ChatTemplate
from lossmask.pipeline.tokenize import tokenize_batch
from lossmask.schemas.records import Conversation, Message, SourceRef
from lossmask.schemas.shards import RowFlag

from .support import FIXTURE_TOKENIZER, builtin_setup, read_rows, run_prepare, write_jsonl

# open-instruct's Tulu template: a non-final assistant turn gets eos + "\n", the final one eos only, so the
# generation prompt is not a prefix of the rendering where two assistant messages follow each other.
TULU = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{% if not loop.last %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)


def counted(info, template_source, conversation, **options) -> list[str]:
    template = ChatTemplate("t", template_source, {"bos_token": "<s>", "eos_token": "</s>"})
    renderer = Renderer(template, info.for_template(template_source), RenderOptions(**options))
    results = tokenize_batch(renderer.tokenizer, renderer.render(conversation))
    texts = []
    for result in results:
        counted_ids = result.ids[1:][result.trainable[1:] == 1].tolist()
        texts.append(info.tokenizer.decode(counted_ids, skip_special_tokens=False))
    return texts


def test_two_answers_in_a_row_never_count_the_second_header():
    info, _ = builtin_setup("zephyr")  # <|user|>, <|assistant|>, </s> as control tokens
    conversation = Conversation(
        [Message("user", "Q?"), Message("assistant", "First thing."), Message("assistant", "Second thing.")],
        SourceRef("t", 1),
    )
    assert "".join(counted(info, TULU, conversation)) == "First thing.</s>Second thing.</s>"


def test_a_marker_that_is_no_token_stops_the_job_unless_allowed():
    info, _ = builtin_setup("chatml")
    source = "{% for m in messages %}<|im_start|>{{ m.role }}<|im_sep|>{{ m.content }}<|turn_end|>{% endfor %}"
    source += "{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}"
    template = ChatTemplate("sep", source, {})
    with pytest.raises(SetupError, match=r"<\|im_sep\|>.*<\|turn_end\|>.*--allow-text-markers"):
        Renderer(template, info.for_template(source), RenderOptions())
    conversation = Conversation([Message("user", "Q?"), Message("assistant", "A.")], SourceRef("t", 1))
    (text,) = counted(info, source, conversation, allow_text_markers=True)
    assert text == "A.<|turn_end|>"  # the whole text marker trains, never a partial piece of it


def test_chatml_with_a_tokenizer_that_lacks_its_markers_exits_2(tmp_path):
    """`--chat-template chatml` on a tokenizer with no <|im_start|>/<|im_end|>: one message at setup, exit 2."""
    from click.testing import CliRunner
    from lossmask.cli import main

    folder = tmp_path / "tok"
    folder.mkdir()
    spec = json.loads((FIXTURE_TOKENIZER / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in ("<|im_start|>", "<|im_end|>")]
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}), encoding="utf-8")
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}],
    )
    result = CliRunner().invoke(
        main,
        ["prepare", str(data), "--tokenizer", str(folder), "--chat-template", "chatml", "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 2, result.output
    assert "<|im_end|>" in result.output and "no token" in result.output and "Traceback" not in result.output


def test_template_variables_come_from_the_record(tmp_path):
    source = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% if mood %}({{ mood }}) {% endif %}{% endif %}"
    )
    (tmp_path / "t.jinja").write_text(source, encoding="utf-8")
    plain = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    moody = {**plain, "chat_template_kwargs": {"mood": "calm"}}
    path = write_jsonl(tmp_path / "in.jsonl", [plain, moody])
    manifest, out = run_prepare(tmp_path, [path], chat_template=str(tmp_path / "t.jinja"))
    assert manifest["records"]["written"] == 2
    rows = read_rows(out)
    # The record's own variable changed its generation prompt (so its context differs from the rendering);
    # the other record's did not.
    assert not rows[0]["flags"] & RowFlag.GEN_PROMPT_MISMATCH
    assert rows[1]["flags"] & RowFlag.GEN_PROMPT_MISMATCH


def test_json_string_arguments_stay_strings_where_the_template_takes_them(tmp_path):
    """Hermes-style templates write string arguments as they are and quote nothing; ours (the fixture's ChatML)
    applies tojson, so a string would be double-encoded: it is decoded, and the row says so."""
    tools = [{"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}]
    record = {
        "tools": tools,
        "messages": [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]},
        ],
    }
    path = write_jsonl(tmp_path / "in.jsonl", [record])
    _, out = run_prepare(tmp_path, [path])
    (row,) = read_rows(out)
    assert row["flags"] & RowFlag.TOOL_ARGUMENTS_CONVERTED
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
    text = tokenizer.decode(row["input_ids"] + row["target_ids"][-1:], skip_special_tokens=False)
    assert '"arguments": {"a": 1}' in text and '\\"a\\"' not in text
    # The bare function schema reached the template in the OpenAI shape.
    assert '{"type": "function", "function": {"name": "f"' in text
