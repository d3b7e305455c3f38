"""Family STYLE tokenizers for the reasoning and tool-call tests, built the way the real-world kit's `*-style`
folders were made: the kit's real SmolLM2 byte-level BPE, plus one model family's control and reasoning tokens
appended as added tokens (marked special or not as in that family's real `tokenizer.json`), its real chat
template from the kit, its bos/eos/pad strings and its `generation_config.json` stop tokens.

    python scripts/make_fixtures.py --styles DIR      # writes DIR/<family>-style/ for every family below

The ids and the vocabulary are not the real models': use these to test template shape, stop sequences and
masks, never to check ids against a real model. They are not committed (they derive from the kit, about 2 MB
each); the tests build them once per session, and skip, saying why, when the kit is absent.

Sources of the token lists and flags (see each family's note): the models' tokenizer_config.json /
generation_config.json as published on the Hugging Face Hub, read from stored copies; flags marked
"unverified" could not be read from a real file and follow the family's closest verified relative.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer


@dataclass(frozen=True)
class Family:
    name: str
    template: str  # path inside the kit's templates/
    special: tuple[str, ...]  # added tokens with special=True
    plain: tuple[str, ...]  # added tokens with special=False (still control tokens where the template writes them)
    bos: str | None
    eos: str
    pad: str | None
    stops: tuple[str, ...]  # generation_config.json eos_token_id, as token strings
    note: str = ""


FAMILIES: tuple[Family, ...] = (
    Family(
        "qwen3",
        "llama.cpp/Qwen-Qwen3-0.6B.jinja",
        special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"),
        plain=("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        stops=("<|im_end|>", "<|endoftext|>"),
        note="Qwen3-4B tokenizer_config.json and generation_config.json: <think> and the tool tags are added "
        "tokens with special=false.",
    ),
    Family(
        "deepseek-r1",
        "llama.cpp/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        special=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
        plain=("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"),
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        pad="<｜end▁of▁sentence｜>",
        stops=("<｜end▁of▁sentence｜>",),
        note="DeepSeek-R1-Distill-Qwen tokenizer_config.json: User/Assistant and the think tags are special=false; "
        "the template's tool tokens are not in this vocabulary.",
    ),
    Family(
        "deepseek-v3",
        "trl/deepseekv3.jinja",
        special=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"),
        plain=(
            "<｜User｜>",
            "<｜Assistant｜>",
            "<think>",
            "</think>",
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>",
            "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>",
            "<｜tool▁output▁begin｜>",
            "<｜tool▁output▁end｜>",
            "<｜tool▁sep｜>",
        ),
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        pad="<｜end▁of▁sentence｜>",
        stops=("<｜end▁of▁sentence｜>",),
        note="DeepSeek-V3/V3.1 token list; flags unverified (as R1-Distill: only bos/eos/pad special).",
    ),
    Family(
        "gpt-oss",
        "llama.cpp/openai-gpt-oss-120b.jinja",
        special=(
            "<|startoftext|>",
            "<|endoftext|>",
            "<|return|>",
            "<|constrain|>",
            "<|channel|>",
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|call|>",
        ),
        plain=(),
        bos="<|startoftext|>",
        eos="<|return|>",
        pad="<|endoftext|>",
        stops=("<|return|>", "<|endoftext|>", "<|call|>"),
        note="openai/gpt-oss-20b special_tokens_map.json and generation_config.json (eos [200002, 199999, 200012]).",
    ),
    Family(
        "glm4.5",
        "trl/glm4moe.jinja",
        special=("[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
        plain=(
            "<think>",
            "</think>",
            "<tool_call>",
            "</tool_call>",
            "<tool_response>",
            "</tool_response>",
            "<arg_key>",
            "</arg_key>",
            "<arg_value>",
            "</arg_value>",
            "/nothink",
        ),
        bos=None,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        stops=("<|endoftext|>", "<|user|>", "<|observation|>"),
        note="GLM-4.5: role tokens special (GLM-4.5V tokenizer_config.json); generation_config eos "
        "[151329, 151336, 151338]; flags of the think and tool tags unverified (special=false, as Qwen).",
    ),
    Family(
        "cohere2",
        "trl/cohere2.jinja",
        special=("<BOS_TOKEN>", "<PAD>", "<UNK>", "<EOS_TOKEN>"),
        plain=(
            "<|START_OF_TURN_TOKEN|>",
            "<|END_OF_TURN_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
            "<|START_RESPONSE|>",
            "<|END_RESPONSE|>",
            "<|START_THINKING|>",
            "<|END_THINKING|>",
            "<|START_ACTION|>",
            "<|END_ACTION|>",
            "<|START_TOOL_RESULT|>",
            "<|END_TOOL_RESULT|>",
        ),
        bos="<BOS_TOKEN>",
        eos="<|END_OF_TURN_TOKEN|>",
        pad="<PAD>",
        stops=("<|END_OF_TURN_TOKEN|>",),
        note="Command R7B special_tokens_map.json (eos <|END_OF_TURN_TOKEN|>); the turn tokens are not marked "
        "special in Command-R tokenizers (llama.cpp convert_hf_to_gguf.py); R7B's flags unverified.",
    ),
)


def build_style(kit: Path, family: Family, out: Path) -> Path:
    """Write `out/<family>-style/` and return it."""
    folder = out / f"{family.name}-style"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(kit / "tokenizers" / "smollm2" / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in family.special])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.plain])
    tokenizer.save(str(folder / "tokenizer.json"))
    template = (kit / "templates" / family.template).read_text(encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": family.bos,
        "eos_token": family.eos,
        "pad_token": family.pad,
        "chat_template": template,
        "style_note": f"STYLE tokenizer (lossmask scripts/style_tokenizers.py): {family.note}",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    stop_ids = [tokenizer.token_to_id(t) for t in family.stops]
    generation = {"eos_token_id": stop_ids if len(stop_ids) > 1 else stop_ids[0]}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
    return folder


def build_styles(kit: Path, out: Path) -> dict[str, Path]:
    """Every family's STYLE folder under `out`, by family name."""
    return {family.name: build_style(kit, family, out) for family in FAMILIES}
