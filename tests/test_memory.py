"""Memory stays flat: peak RSS of `prepare` on 4x the input is about the same as on 1x.

Memory is bounded by what is in flight (a few batches per worker) and by one shard's rows in the writer, never
by the input's size. Each run is a fresh subprocess that reports its own peak RSS.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import DATA, FIXTURE_TOKENIZER

pytestmark = pytest.mark.slow

MEASURE = """
import resource, sys
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.prepare import prepare
config = PrepareConfig(inputs=[sys.argv[1]], out=sys.argv[2], tokenizer=sys.argv[3], workers=1, batch_size=64,
                       shard_max_rows=500)
manifest = prepare(config)
print(manifest["records"]["read"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kb(tmp_path: Path, copies: int) -> tuple[int, int]:
    path = tmp_path / f"x{copies}.jsonl"
    path.write_text((DATA / "openai.jsonl").read_text() * copies)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(tmp_path / f"out{copies}"), str(FIXTURE_TOKENIZER)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_peak_memory_does_not_grow_with_the_input(tmp_path):
    small_records, small = peak_rss_kb(tmp_path, 10)
    large_records, large = peak_rss_kb(tmp_path, 40)
    assert large_records == 4 * small_records
    print(f"\npeak RSS: {small_records} records {small / 1024:.0f} MB, {large_records} records {large / 1024:.0f} MB")
    assert large <= small * 1.15 + 16 * 1024, (small, large)
