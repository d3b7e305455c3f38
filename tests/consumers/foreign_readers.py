"""The readers of two trainers that cannot be installed in this venv, imported from their released wheels.

- Megatron-Bridge 0.6.2 requires Python >=3.12,<3.13 (this venv is 3.11) and a CUDA stack (megatron-core[dev],
  flashinfer, fast-hadamard-transform, transformer-engine): pip refuses it here.
- llm-foundry 0.22.0 pins torch 2.7.0, transformers <4.52 and mosaicml-streaming <0.13, against the dev extra's
  torch 2.13 and transformers 5.

Both are pure-Python wheels, and the code that reads a dataset imports, but never calls on that path, modules of
`megatron.core` / `megatron.training` (distributed state, model wrappers) or of llm-foundry's own package root
(models, composer callbacks). So a test can run the released reader itself: unpack the wheel into a folder and
name the folder in an environment variable,

    pip download --no-deps --python-version 3.12 --only-binary=:all: -d /tmp/w megatron-bridge==0.6.2
    unzip -q /tmp/w/megatron_bridge-0.6.2-py3-none-any.whl -d /tmp/megatron-bridge
    export LOSSMASK_MEGATRON_BRIDGE_SRC=/tmp/megatron-bridge

    pip download --no-deps --only-binary=:all: -d /tmp/w llm-foundry==0.22.0
    unzip -q /tmp/w/llm_foundry-0.22.0-py3-none-any.whl -d /tmp/llm-foundry
    export LOSSMASK_LLM_FOUNDRY_SRC=/tmp/llm-foundry

(`make test` does this into .venv/foreign, where the tests look when the variable is unset), and the modules
here import it with exactly those unused modules replaced by empty stand-ins (`megatron.core.*`
and `megatron.training.*` for Megatron-Bridge; llm-foundry's package `__init__` files for llm-foundry). Nothing
of the readers themselves is replaced: a stand-in that were called would fail the test, not pass it. Without the
variable the tests skip and say this; the spec tests beside them run everywhere.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MEGATRON_BRIDGE_ENV = "LOSSMASK_MEGATRON_BRIDGE_SRC"
LLM_FOUNDRY_ENV = "LOSSMASK_LLM_FOUNDRY_SRC"
MEGATRON_BRIDGE_VERSION = "0.6.2"
LLM_FOUNDRY_VERSION = "0.22.0"


# Where `make test` unpacks the two wheels (the Makefile's FOREIGN_READERS), used when the variable is unset.
UNPACKED = Path(__file__).resolve().parents[2] / ".venv" / "foreign"
UNPACKED_NAMES = {MEGATRON_BRIDGE_ENV: "megatron-bridge", LLM_FOUNDRY_ENV: "llm-foundry"}


def source_folder(variable: str, package: str) -> Path | None:
    """The unpacked wheel named by `variable`, else the one `make test` unpacked, when it holds `package` (a path
    inside it)."""
    value = os.environ.get(variable) or str(UNPACKED / UNPACKED_NAMES[variable])
    if not (Path(value) / package).exists():
        return None
    return Path(value)


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    """An empty module (a package when `path` is given, whose submodules load from there), without running the
    package's own `__init__.py`."""
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    sys.modules[name] = module
    return module


class _Unused:
    """What a stand-in module gives for any name: a class, so `from x import Y` and annotations work; calling a
    method on it fails, so a reader that needed the real thing would fail the test."""


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Unused,), {"__module__": self.__name__})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any `megatron.core.*` or `megatron.training.*` module, as an empty stand-in package."""

    prefixes = ("megatron.core", "megatron.training")

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.prefixes or fullname.startswith(tuple(p + "." for p in self.prefixes)):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _MultiStorageClientFeature:
    """megatron.core.msc_utils' switch for its multi-storage client: off, so every reader uses local files."""

    @staticmethod
    def is_enabled() -> bool:
        return False


@contextmanager
def _isolated_modules(prefixes: tuple[str, ...]) -> Iterator[None]:
    """Restore sys.modules and sys.meta_path afterwards: the stand-ins must not leak into other tests."""
    saved = {name: module for name, module in sys.modules.items() if name.startswith(prefixes)}
    meta_path = list(sys.meta_path)
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n.startswith(prefixes)]:
            del sys.modules[name]
        sys.modules.update(saved)
        sys.meta_path[:] = meta_path


@contextmanager
def megatron_bridge(src: Path) -> Iterator[types.SimpleNamespace]:
    """Megatron-Bridge's packed-Parquet dataset, its packing config and its dataset builder, from `src`."""
    with _isolated_modules(("megatron",)):
        root = src / "megatron"
        _package("megatron", root)
        # The packages whose __init__ imports the models, recipes and training loop: their files load, their
        # __init__ does not.
        for sub in ("bridge", "bridge/data", "bridge/data/datasets", "bridge/data/builders", "bridge/data/sources"):
            _package("megatron." + sub.replace("/", "."), root / sub)
        for sub in ("bridge/utils", "bridge/training", "bridge/training/tokenizers", "bridge/training/utils"):
            _package("megatron." + sub.replace("/", "."), root / sub)
        sys.meta_path.insert(0, _StandInFinder())
        # The two facts the read path does ask megatron.core: no multi-storage client, and one process of rank 0.
        importlib.import_module("megatron.core.msc_utils").MultiStorageClientFeature = _MultiStorageClientFeature
        ranks = importlib.import_module("megatron.core._rank_utils")
        ranks.safe_get_rank, ranks.safe_get_world_size = (lambda: 0), (lambda: 1)
        builders = importlib.import_module("megatron.bridge.data.builders.gpt_sft")
        # What docs/export.md imports from the builders package (its __init__ re-exports it).
        sys.modules["megatron.bridge.data.builders"].GPTSFTDatasetConfig = builders.GPTSFTDatasetConfig
        sys.modules["megatron.bridge.data.builders"].GPTSFTDatasetBuilder = builders.GPTSFTDatasetBuilder
        yield types.SimpleNamespace(
            parquet=importlib.import_module("megatron.bridge.data.packing.parquet"),
            packing=importlib.import_module("megatron.bridge.data.packing"),
            builders=builders,
        )


@contextmanager
def llm_foundry(src: Path) -> Iterator[types.SimpleNamespace]:
    """llm-foundry's finetuning collator (`llmfoundry/data/finetuning/collator.py`), from `src`."""
    with _isolated_modules(("llmfoundry",)):
        root = src / "llmfoundry"
        for sub in ("", "/data", "/data/finetuning", "/utils"):
            _package("llmfoundry" + sub.replace("/", "."), root / sub.strip("/"))
        yield types.SimpleNamespace(collator=importlib.import_module("llmfoundry.data.finetuning.collator"))
