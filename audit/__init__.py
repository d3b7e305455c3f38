"""The mask audit: which tokens train, shown where people look, and lints for the bugs that silently ruin SFT.

    source  (shards folder, or raw inputs run through `process_batch` on a sample)
      -> stats      polars over the rows: lengths, counted fractions, tokens per class and role
      -> lints      row flags, token scans, rejects and template probes -> one result per lint code
      -> views      chosen rows as tokens with text, class and counted flag
      -> terminal (rich), HTML (one self-contained file) or JSON

`run_audit` does it all and returns an `AuditReport`; the CLI only prints or writes it.
"""

from __future__ import annotations

from .report import AuditReport, run_audit
from .source import open_shards, run_sample

__all__ = ["AuditReport", "open_shards", "run_audit", "run_sample"]
