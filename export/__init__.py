"""Shards out to external trainers, and the readable view of `lossmask inspect`.

- `export_hf`: Hugging Face rows (`input_ids` + `labels`) for `Trainer`, TRL and `datasets`;
- `export_olmo_core`, `export_datatrove`, `export_mds`, `export_megatron_bridge`: each in that trainer's own
  on-disk layout and naming (OLMo-core as open-instruct writes it, datatrove/nanotron, MosaicML Streaming for
  llm-foundry, Megatron-Bridge packed SFT), one module each;
- `export_memmap` / `MemmapExport`: lossmask's own flat memmaps.

Every export streams `unshift`'s whole unshifted documents, one record batch at a time; the layouts and their
exact semantics are in the modules' docstrings and docs/export.md.
"""

from .datatrove import export_datatrove
from .hf import export_hf
from .mds import export_mds
from .megatron_bridge import export_megatron_bridge
from .memmap import MemmapExport, export_memmap
from .olmo_core import export_olmo_core
from .unshift import Unshifted, unshift, unshift_batch, unshifted_batches

__all__ = [
    "MemmapExport",
    "Unshifted",
    "export_datatrove",
    "export_hf",
    "export_mds",
    "export_megatron_bridge",
    "export_memmap",
    "export_olmo_core",
    "unshift",
    "unshift_batch",
    "unshifted_batches",
]
