"""Every code block of README.md and docs/export.md that feeds a trainer, run as written: a tiny random-weight
Llama built from a config (saved where the snippets say "path/to/model", with the fixture tokenizer), the
export where they say "hf/", CPU, a few steps. HF `Trainer` and TRL's `SFTTrainer` (dev extra) on rows and
packed exports. Then when packed documents stay isolated, proved both ways: no KV cache and no attention mask
(isolated, for sdpa and eager), a KV cache or an all-ones attention mask (not isolated).
"""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from lossmask.export.hf import export_hf
from lossmask.loader.shards import ShardSet

from .tiny_llama import save_tiny_llama

torch = pytest.importorskip("torch", reason="PyTorch (the pinned CPU wheel) is in the dev extra")
transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra")
pytest.importorskip("trl", reason="TRL is not installed: it is in the dev extra (trl==1.16.0, CPU torch)")

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "fixtures" / "tokenizer"
pytestmark = pytest.mark.slow


def trainer_snippets() -> list[tuple[str, str, str]]:
    """(source file, layout, code) of every Python block that builds a Trainer or SFTTrainer. Each block's first
    line says which export it reads; "for a packed export set padding_free=True" runs it on both."""
    runs = []
    for name in ("README.md", "docs/export.md"):
        for block in re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(encoding="utf-8"), re.DOTALL):
            if "Trainer(" not in block:
                continue
            first = block.splitlines()[0]
            assert first.startswith("# hf/ holds a"), f"{name}: say which export the snippet reads: {first!r}"
            if "rows export" in first:
                runs.append((name, "rows", block))
            if "packed export" in first:
                code = block.replace("padding_free=False", "padding_free=True") if "rows export" in first else block
                runs.append((name, "packed", code))
    return runs


SNIPPETS = trainer_snippets()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and the fixture tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("model")
    save_tiny_llama(folder, TOKENIZER)
    return folder


@pytest.fixture(scope="module")
def exports(kit, tmp_path_factory) -> dict[str, Path]:
    docs = kit.random_documents(np.random.default_rng(21), 24, max_len=20, vocab=1000)
    out = {}
    for layout in ("rows", "packed"):
        shards = kit.write(docs, packed=layout == "packed")
        out[layout] = tmp_path_factory.mktemp(f"hf-{layout}") / "hf"
        export_hf(ShardSet(shards), out[layout])
    return out


@pytest.fixture
def forward_calls(monkeypatch) -> list[dict]:
    """What the model saw on every training forward: whether a KV cache was on, the mask and the positions."""
    calls: list[dict] = []
    # The decoder inside the causal LM: trainers may rebind the outer model's forward on the instance.
    original = transformers.LlamaModel.forward

    @functools.wraps(original)  # the trainers read the forward signature to pick the dataset's columns
    def recording(self, *args, **kwargs):
        use_cache = kwargs.get("use_cache")
        calls.append(
            {
                "use_cache": self.config.use_cache if use_cache is None else use_cache,
                "attention_mask": kwargs.get("attention_mask"),
                "position_ids": kwargs.get("position_ids"),
                "training": self.training,
            }
        )
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.LlamaModel, "forward", recording)
    return calls


@pytest.mark.parametrize(("source", "layout", "code"), SNIPPETS, ids=[f"{s}-{lay}" for s, lay, _ in SNIPPETS])
def test_the_snippet_trains(source, layout, code, tiny_model, exports, tmp_path, monkeypatch, forward_calls):
    (tmp_path / "path" / "to").mkdir(parents=True)
    shutil.copytree(tiny_model, tmp_path / "path" / "to" / "model")
    shutil.copytree(exports[layout], tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    scope: dict = {}
    exec(compile(code, f"{source} snippet", "exec"), scope)
    training = [c for c in forward_calls if c["training"]]
    assert training, "the snippet ran no training step"
    assert not any(c["use_cache"] for c in training), "a training forward ran with a KV cache"
    if layout == "packed":
        for call in training:  # the conditions of isolation: no mask, positions restarting per document
            assert call["attention_mask"] is None
            positions = call["position_ids"][0]
            assert (positions == 0).sum() > 1
    assert (tmp_path / "run").is_dir()


def test_both_layouts_and_both_trainers_are_covered():
    covered = {(layout, "SFTTrainer(" in code) for _, layout, code in SNIPPETS}
    assert covered == {("rows", True), ("rows", False), ("packed", True), ("packed", False)}


def documents_and_packed_row(rng) -> tuple:
    docs = [torch.as_tensor(rng.integers(0, 1000, n)) for n in (7, 5, 9)]
    ids = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(d.numel()) for d in docs])[None]
    return docs, ids, positions


def per_document_difference(packed_logits, docs, alone) -> list[float]:
    at, out = 0, []
    for doc, logits in zip(docs, alone, strict=True):
        out.append(float((packed_logits[at : at + doc.numel()] - logits).abs().max()))
        at += doc.numel()
    return out


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_packed_documents_are_isolated_exactly_without_a_kv_cache(tiny_model, implementation):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=implementation).eval()
    assert model.config.use_cache  # a model as loaded has the cache on
    docs, ids, positions = documents_and_packed_row(np.random.default_rng(5))
    with torch.no_grad():
        alone = [model(d[None], use_cache=False).logits[0] for d in docs]
        isolated = model(ids, position_ids=positions, use_cache=False).logits[0]
        cached = model(ids, position_ids=positions, use_cache=True).logits[0]
        masked = model(ids, position_ids=positions, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
    assert max(per_document_difference(isolated, docs, alone)) < 1e-5
    for leaky in (cached, masked):  # documents 2 and 3 see the ones before them; document 1 sees nothing earlier
        first, *later = per_document_difference(leaky, docs, alone)
        assert first < 1e-5 and min(later) > 1e-2


def test_flash_attention_2_is_not_available_on_this_cpu(tiny_model):
    """Why the snippets say sdpa: flash_attention_2 needs the flash-attn package and a CUDA GPU."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: flash_attention_2 may work here")
    with pytest.raises(ImportError):
        transformers.AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="flash_attention_2")
