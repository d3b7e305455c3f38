"""Memory stays flat: peak RSS of `prepare` on 8x the input is about the same as on 1x, with the default shard
size (100k rows), so every row here lands in one shard (keeping rows until a shard is full added ~40 MB and
failed this bound).

Memory is bounded by what is in flight (a few batches per worker, one record batch in the writer), never by the
input's size or the shard size. Each run is a fresh subprocess that reports its own peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support import DATA, FIXTURE_TOKENIZER

pytestmark = pytest.mark.slow

# VmHWM, not getrusage's ru_maxrss: on Linux ru_maxrss survives exec and would include the pytest parent's RSS.
MEASURE = """
import sys
from lossmask.pipeline.config import PrepareConfig
from lossmask.jobs.prepare import prepare
config = PrepareConfig(
    inputs=[sys.argv[1]], out=sys.argv[2], tokenizer=sys.argv[3], workers=1, batch_size=64, encoder=sys.argv[4]
)
manifest = prepare(config)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
print(manifest["records"]["read"], peak)
"""


def long_conversations(count: int) -> str:
    """Conversations of ~500 tokens, so that keeping rows around would show in the peak."""
    lines = (DATA / "openai.jsonl").read_text().splitlines()
    out = []
    for i in range(count):
        record = json.loads(lines[i % len(lines)])
        for message in record["messages"]:
            message["content"] = " ".join([message["content"]] * 8)
        out.append(json.dumps(record))
    return "\n".join(out) + "\n"


def peak_rss_kb(tmp_path: Path, count: int, encoder: str) -> tuple[int, int]:
    path = tmp_path / f"x{count}.jsonl"
    path.write_text(long_conversations(count))
    out = subprocess.run(  # one tokenizer thread: fewer allocator arenas, steadier peaks
        [sys.executable, "-c", MEASURE, str(path), str(tmp_path / f"out{count}"), str(FIXTURE_TOKENIZER), encoder],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RAYON_NUM_THREADS": "1"},
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS (VmHWM) from Linux /proc")
# Each encoder on both sizes: `--encoder auto` picks tiktoken only for inputs of 4 MB or more, so comparing sizes
# under auto would compare encoders. The tiktoken path's peak settles after a few thousand records (2,000: 118 MB,
# 16,000: 132 MB, 48,000: 128 MB here), so the smaller run has 4,000.
@pytest.mark.parametrize("encoder", ["tokenizers", "tiktoken"])
def test_peak_memory_does_not_grow_with_the_input(tmp_path, encoder):
    small_records, small = peak_rss_kb(tmp_path, 4000, encoder)
    large_records, large = peak_rss_kb(tmp_path, 32000, encoder)
    assert large_records == 8 * small_records
    print(f"\npeak RSS: {small_records} records {small / 1024:.0f} MB, {large_records} records {large / 1024:.0f} MB")
    assert large <= small * 1.15, (small, large)  # run-to-run noise is ~5%; holding rows grew ~30%
