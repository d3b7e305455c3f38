"""Helpers over ../shared/realworld for the tests: the template index and tokenizers that know each template's
control tokens (the kit's STYLE approach: SmolLM2's vocabulary plus the template's markers as special tokens)."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from lossmask.pipeline.templates import ChatTemplate
from lossmask.pipeline.templates.probe import MARKER_SHAPE
from lossmask.pipeline.tokenizer import TokenizerInfo
from tokenizers import AddedToken, Tokenizer

from .support import REALWORLD

TEMPLATES = REALWORLD / "templates"
TOKENIZERS = REALWORLD / "tokenizers"
_INDEX_ROW = re.compile(r"^\| ([^|]+?\.(?:jinja|json))[^|]*\|")
# Literal strings in templates that look like control tokens: <|x|>, <｜x｜>, <x>, </x>, <|x>, <x|>, [INST], [|x|].
_CONTROL = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|<｜[^｜]{1,40}｜>|<\|?[a-z_]{1,20}\|?>|</[a-z_]{1,20}>|<seed:[a-z_]+>"
    r"|\[\|?[A-Za-z_]{2,20}\|?\]|\[/[A-Z_]{2,20}\]"
)
BOS, EOS = "<s>", "</s>"


def kit_templates() -> list[tuple[str, str]]:
    """(name, Jinja source) for every template in templates/INDEX.md."""
    if not TEMPLATES.is_dir():
        return []
    out = []
    for line in (TEMPLATES / "INDEX.md").read_text(encoding="utf-8").splitlines():
        match = _INDEX_ROW.match(line)
        if match:
            name = match.group(1).strip()
            path = TEMPLATES / name
            source = path.read_text(encoding="utf-8")
            if name.endswith(".json"):
                source = json.loads(source)["chat_template"]
            out.append((name, source))
    return out


def _rendered_markers(source: str) -> set[str]:
    """Marker-shaped strings a template writes that its source only builds (`'<|' + role + '|>'`)."""
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    try:
        template = ChatTemplate("style", source, {"bos_token": BOS, "eos_token": EOS})
        text = template.render(messages) + template.render(messages[:1], add_generation_prompt=True)
    except Exception:  # templates that need tools or refuse this conversation: their source is all we have
        return set()
    return set(MARKER_SHAPE.findall(text))


def style_tokenizer(*sources: str) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(TOKENIZERS / "smollm2" / "tokenizer.json"))
    found = {BOS, EOS} | {t for source in sources for t in _CONTROL.findall(source)}
    found = sorted(found | {t for source in sources for t in _rendered_markers(source)})
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in found])
    return tokenizer


@functools.lru_cache(maxsize=256)
def style_info(source: str) -> TokenizerInfo:
    info = TokenizerInfo(
        path="style", tokenizer=style_tokenizer(source), special_tokens={"bos_token": BOS, "eos_token": EOS}
    )
    return info.for_template(source)


def save_style_folder(folder: Path, chat_template: str, *sources: str) -> Path:
    """A Hugging Face model folder (tokenizer.json + tokenizer_config.json) for transformers and lossmask alike."""
    folder.mkdir(parents=True, exist_ok=True)
    style_tokenizer(chat_template, *sources).save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": BOS,
        "eos_token": EOS,
        "chat_template": chat_template,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
