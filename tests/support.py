"""Shared test helpers: fixture paths, the real-world kit (skipped when absent), running prepare, reading shards.

Imported by the tests (`from .support import ...`); conftest.py holds only what pytest itself needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from lossmask.jobs.prepare import prepare
from lossmask.pipeline.config import PrepareConfig

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FIXTURE_TOKENIZER = FIXTURES / "tokenizer"
DATA = FIXTURES / "data"
# The inputs of the Makefile's `demo` target.
DEMO_INPUTS = ["openai.jsonl", "sharegpt.json", "alpaca.json", "prompt_completion.jsonl", "tools.jsonl"]
# The real-world kit (real tokenizers, templates, data): $LOSSMASK_REALWORLD, else ../shared/realworld beside the
# repository, else where this workplace keeps it. Tests that need it skip, saying so, when none exists.
_KIT_PLACES = [os.environ.get("LOSSMASK_REALWORLD", ""), ROOT / ".." / "shared" / "realworld", "/work/shared/realworld"]
REALWORLD = next(
    (Path(p).resolve() for p in _KIT_PLACES if p and Path(p).is_dir()), (ROOT / ".." / "shared" / "realworld")
)
KIT_REASON = (
    "the real-world kit is absent: set LOSSMASK_REALWORLD, or put it beside the repository in ../shared/realworld"
)

realworld = pytest.mark.skipif(not REALWORLD.is_dir(), reason=KIT_REASON)
if REALWORLD.is_dir():  # one answer for every test helper that looks the kit up (they read this variable)
    os.environ.setdefault("LOSSMASK_REALWORLD", str(REALWORLD))


def run_prepare(tmp_path: Path, inputs: list[Any], **options: Any) -> tuple[dict[str, Any], Path]:
    out = tmp_path / options.pop("out_name", "out")
    options.setdefault("tokenizer", str(FIXTURE_TOKENIZER))
    config = PrepareConfig.from_mapping({"inputs": [str(i) for i in inputs], "out": str(out), **options})
    manifest = prepare(config)
    return manifest, out


def read_rows(out: Path) -> list[dict[str, Any]]:
    return ds.dataset(str(out), format="arrow").to_table().to_pylist()


def read_table(out: Path) -> pa.Table:
    return ds.dataset(str(out), format="arrow").to_table()


def read_rejects(out: Path) -> list[dict[str, Any]]:
    path = out / "_rejects.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# Each built-in template with the control tokens and BOS/EOS its model family uses; added to the fixture
# tokenizer as special tokens, as real tokenizers of that family have them.
BUILTIN_SPECIALS: dict[str, dict[str, Any]] = {
    "chatml": {"tokens": [], "bos": None, "eos": "<|im_end|>"},
    "llama3": {
        "tokens": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
    },
    "mistral": {"tokens": ["<s>", "</s>", "[INST]", "[/INST]"], "bos": "<s>", "eos": "</s>"},
    "gemma": {"tokens": ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "bos": "<bos>", "eos": "<eos>"},
    "phi3": {"tokens": ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"], "bos": None, "eos": "<|endoftext|>"},
    "zephyr": {"tokens": ["<|user|>", "<|assistant|>", "<|system|>", "</s>"], "bos": None, "eos": "</s>"},
    "alpaca": {"tokens": ["</s>"], "bos": None, "eos": "</s>"},
}


def builtin_setup(name: str) -> tuple[Any, Any]:
    """(TokenizerInfo, ChatTemplate) for a built-in template, on the fixture tokenizer plus its family's tokens."""
    from lossmask.pipeline.templates import ChatTemplate, builtin_source
    from lossmask.pipeline.tokenizer import TokenizerInfo
    from tokenizers import AddedToken, Tokenizer

    spec = BUILTIN_SPECIALS[name]
    tokenizer = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["tokens"]])
    special = {key: spec[short] for key, short in (("bos_token", "bos"), ("eos_token", "eos")) if spec[short]}
    source = builtin_source(name)
    info = TokenizerInfo(path=f"fixture+{name}", tokenizer=tokenizer, special_tokens=special).for_template(source)
    return info, ChatTemplate(name=f"builtin:{name}", source=source, variables=dict(special))


# A real S3-compatible server for the object-storage tests (moto's, from the dev extra; a test module that uses it
# skips without it: `pytest.importorskip("moto.server")`).
S3_BUCKET = "lossmask-test"


@contextlib.contextmanager
def s3_server(staging: Path) -> Iterator[Any]:
    """A moto S3 server on 127.0.0.1 with an empty bucket `S3_BUCKET`, and the standard AWS variables pointing at
    it while it runs (so subprocesses inherit them; `LOSSMASK_STAGING` too, for `--out s3://`). Yields a pyarrow
    S3FileSystem on it. lossmask's own filesystems are cached per bucket and process (`storage`): dropped at
    both ends, so a module that starts its own server on another port is not answered by an earlier one."""
    import pyarrow.fs as pafs
    from lossmask import storage
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "LOSSMASK_STAGING": str(staging),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._bucket_filesystem.cache_clear()
    try:
        fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
        fs.create_dir(S3_BUCKET)
        yield fs
    finally:
        server.stop()
        storage._bucket_filesystem.cache_clear()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_distinct_conversations(path: Path, copies: int, bad: str, bad_after: Callable[[int], bool]) -> Path:
    """`copies` copies of the fixtures' OpenAI conversations, each answer made distinct (`(copy.i)` appended), with
    `bad` (lines that do not parse, blank lines) written after each conversation i where `bad_after(i)`."""
    lines = (DATA / "openai.jsonl").read_text(encoding="utf-8").splitlines()
    with open(path, "w", encoding="utf-8") as handle:
        for copy in range(copies):
            for i, line in enumerate(lines):
                record = json.loads(line)
                record["messages"][-1]["content"] += f" ({copy}.{i})"
                handle.write(json.dumps(record) + "\n")
                if bad_after(i):
                    handle.write(bad)
    return path
