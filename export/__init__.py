"""Shards out to external trainers: Hugging Face rows (`export_hf`), flat NumPy memmaps (`export_memmap`,
read back with `MemmapExport`), and the readable view of `lossmask inspect`.

Every export is computed by `unshift`, which turns the shifted rows of the shards back into whole documents;
the layouts and their exact semantics are in `lossmask.schemas.exports` and docs/export.md.
"""

from .hf import export_hf
from .memmap import MemmapExport, export_memmap
from .unshift import Unshifted, unshift, unshift_batch

__all__ = ["MemmapExport", "Unshifted", "export_hf", "export_memmap", "unshift", "unshift_batch"]
