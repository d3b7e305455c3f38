"""Control tokens by shape, and the audit as a gate and a page.

Added tokens shaped like markers (`<|...|>`, `[UPPER_CASE]`) are control tokens even when the tokenizer does not
mark them special (Mistral v3's `[REFERENCE_DOC_n]`): in message text they are escaped like any control token,
never encoded as the real id. Reasoning tags (`<think>`) are never controls by shape: they are text the model
writes unless the template writes them. The HTML report's policy allows its own two blocks by hash, no more."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from lossmask.pipeline.tokenizer import TokenizerInfo, is_marker_shaped, load_tokenizer
from tokenizers import AddedToken, Tokenizer

from ..support import FIXTURE_TOKENIZER, REALWORLD, realworld
from .harness import conversation, jsonl, prepare_capped, run_capped

CONFIG = json.loads((FIXTURE_TOKENIZER / "tokenizer_config.json").read_text())
CHATML = CONFIG["chat_template"]
# Added, none marked special: the shapes of Mistral's, a pipe marker, and Qwen's reasoning tags.
ADDED = ["[REFERENCE_DOC_1]", "[TOOL_CALLS]", "<|tool_marker|>", "<think>", "</think>"]


@pytest.mark.parametrize(
    ("token", "shaped"),
    [
        ("[REFERENCE_DOC_1]", True),
        ("[TOOL_CALLS]", True),
        ("[/INST]", True),
        ("<|im_start|>", True),
        ("<|fim_prefix|>", True),
        ("<think>", False),
        ("</think>", False),
        ("<seed:think>", False),
        ("[lowercase]", False),
        ("[1]", False),
        ("[ TOOL ]", False),
        ("<| spaced |>", False),
        ("<tool_call>", False),
        ("REFERENCE_DOC_1", False),
    ],
)
def test_marker_shapes(token, shaped):
    assert is_marker_shaped(token) is shaped


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """The fixture tokenizer with ADDED as plain (not special) added tokens, and its ChatML template."""
    folder = tmp_path_factory.mktemp("shaped")
    tokenizer = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(CONFIG))
    return folder


def test_added_tokens_shaped_like_markers_are_controls_and_reasoning_tags_are_not(model_folder):
    info = load_tokenizer(str(model_folder))
    controls = set(info.for_template(CHATML).control_tokens)
    assert {"[REFERENCE_DOC_1]", "[TOOL_CALLS]", "<|tool_marker|>"} <= controls
    assert not {"<think>", "</think>"} & controls
    qwen3_like = CHATML + "{%- if add_generation_prompt %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    assert {"<think>", "</think>"} <= set(info.for_template(qwen3_like).control_tokens)  # written: controls


def _ids(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    assert found is not None
    return found


def test_marker_shaped_text_in_messages_is_escaped_and_reasoning_tags_stay_the_models_text(tmp_path, model_folder):
    text = "see [REFERENCE_DOC_1] and <|tool_marker|> then [TOOL_CALLS]"
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(conversation(text, f"quoting {text}"), conversation("what is <think> for?", "tags")))
    run = prepare_capped(tmp_path, [data], "--tokenizer", str(model_folder))
    assert run.counts["written"] == 2
    assert run.manifest["records"]["row_flags"].get("special_escaped") == 1
    tokenizer = Tokenizer.from_file(str(model_folder / "tokenizer.json"))
    rows = ds.dataset(str(run.out), format="arrow").to_table().to_pylist()
    shaped = {_ids(tokenizer, t) for t in ADDED[:3]}
    assert not shaped & set(rows[0]["input_ids"] + rows[0]["target_ids"])  # the escape: text, not markup
    assert _ids(tokenizer, "<think>") in rows[1]["input_ids"]  # an added token the model reads as such
    strict = prepare_capped(
        tmp_path, [data], "--tokenizer", str(model_folder), "--special-tokens-in-content", "reject", out_name="strict"
    )
    assert strict.rejected() == {f"{data}:1": "special_token_in_content"}


@realworld
@pytest.mark.realworld
def test_mistral_v3_reference_docs_in_content_never_become_control_ids(tmp_path):
    folder = REALWORLD / "tokenizers" / "mistral-v3"
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    reference = _ids(tokenizer, "[REFERENCE_DOC_1]")
    assert not tokenizer.get_added_tokens_decoder()[reference].special  # the case: added, not marked special
    info: TokenizerInfo = load_tokenizer(str(folder))
    assert "[REFERENCE_DOC_1]" in info.for_template(info.chat_template).control_tokens
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(conversation("cite [REFERENCE_DOC_1] please", "per [REFERENCE_DOC_1], yes")))
    run = prepare_capped(tmp_path, [data], "--tokenizer", str(folder))
    assert run.counts["written"] == 1
    (row,) = ds.dataset(str(run.out), format="arrow").to_table().to_pylist()
    assert reference not in row["input_ids"]
    assert run.manifest["records"]["row_flags"].get("special_escaped") == 1


def test_the_html_report_allows_its_own_blocks_by_hash_and_nothing_inline(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(conversation("<script>alert(1)</script>", "<img src=x onerror=alert(2)>")))
    shards = prepare_capped(tmp_path, [data]).out
    page = tmp_path / "audit.html"
    run = run_capped(["audit", str(shards), "--html", str(page), "-q"])
    assert run.returncode == 0, run.stderr
    html = page.read_text(encoding="utf-8")
    (policy,) = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy

    def hashes(tag: str) -> set[str]:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)  # executable blocks: no type attribute
        assert blocks, tag
        return {"'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in blocks}

    assert set(directives["script-src"].split()) == hashes("script")
    assert set(directives["style-src"].split()) == hashes("style")
    # What a hash cannot allow, and the page must not need: handlers and style attributes in its markup.
    assert not re.search(r"<[a-z]+[^>]*\son[a-z]+=", html)
    assert not re.search(r"<[a-z]+[^>]*\sstyle=", html)
    assert "<script>alert(1)</script>" not in html
