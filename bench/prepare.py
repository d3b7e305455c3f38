"""`make bench`: lossmask prepare against the raw tokenizer and the TRL/transformers path, on real data.

Corpus: every conversation in ../shared/realworld/data that has an assistant answer, normalized by lossmask's own
parsers to OpenAI `messages` JSONL, repeated to at least 20k conversations. Tokenizer: SmolLM2. In one run:

  (a) raw `tokenizers` `encode_batch` over the same rendered text (the limit: no rendering, no masks, no I/O);
  (b) the TRL/transformers path: `datasets.map` with `apply_chat_template(tokenize=True,
      return_assistant_tokens_mask=True)` on a generation-tagged copy of SmolLM2's template, num_proc = cores,
      then labels (-100 where the mask is 0);
  (c) `lossmask prepare` end to end (read, render, verify, tokenize, mask, write shards), and again on 10x the
      input to show that memory stays flat.

Each runs in its own subprocess; peak RSS is that of the whole process tree (parent and workers), sampled every
20 ms from /proc. Timings are wall clock on this machine, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = Path(os.environ.get("LOSSMASK_REALWORLD", ROOT.parent / "shared" / "realworld"))
if not KIT.is_dir():
    KIT = Path("/work/shared/realworld")
TOKENIZER = KIT / "tokenizers" / "smollm2"
TAGGED_TEMPLATE = ROOT / "bench" / "smollm2_generation.jinja"
CORES = len(os.sched_getaffinity(0))


def build_corpus(path: Path, minimum: int) -> int:
    """Real conversations as OpenAI JSONL, repeated until there are at least `minimum`."""
    from lossmask.pipeline.formats import detect, parse
    from lossmask.pipeline.formats.options import FormatOptions
    from lossmask.pipeline.read import expand_inputs, iter_inputs
    from lossmask.schemas.records import Conversation

    options = FormatOptions()
    files = [p for p in expand_inputs([str(KIT / "data")]) if p.name != "dataset_info.json"]
    conversations = []
    for record in iter_inputs(files):
        if record.error or detect(record.value, options) is None:
            continue
        try:
            parsed = parse(record.value, record.source, None, options)
        except Exception:
            continue
        if isinstance(parsed, Conversation) and any(m.role == "assistant" and m.content for m in parsed.messages):
            messages = [
                {"role": m.role, "content": m.content} for m in parsed.messages if m.content and m.role != "tool"
            ]
            if messages and messages[-1]["role"] == "assistant":
                conversations.append(json.dumps({"messages": messages}, ensure_ascii=False))
    copies = -(-minimum // len(conversations))
    path.write_text("\n".join(conversations * copies) + "\n", encoding="utf-8")
    return len(conversations) * copies


RAW = """
import json, sys, time
from lossmask.pipeline.batch import JobContext
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.formats import parse
from lossmask.pipeline.read import iter_inputs
from pathlib import Path
context = JobContext.from_config(PrepareConfig(tokenizer=sys.argv[2]))
texts = []
for record in iter_inputs([Path(sys.argv[1])]):
    for example in context.renderer.render(parse(record.value, record.source, None, context.format_options)):
        texts.append(example.text)
tokenizer = context.tokenizer.tokenizer
started = time.perf_counter()
tokens = 0
for i in range(0, len(texts), 1024):
    tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts[i : i + 1024], add_special_tokens=False))
print(json.dumps({"seconds": time.perf_counter() - started, "tokens": tokens}))
"""

TRL = """
import json, sys, time, os
import datasets
from transformers import PreTrainedTokenizerFast
datasets.disable_progress_bars()
datasets.disable_caching()
tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[2])
template = open(sys.argv[3]).read()
started = time.perf_counter()
data = datasets.load_dataset("json", data_files=sys.argv[1], split="train")
def tokenize(example):
    out = tokenizer.apply_chat_template(example["messages"], chat_template=template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    labels = [t if m else -100 for t, m in zip(out["input_ids"], out["assistant_masks"])]
    return {"input_ids": out["input_ids"], "labels": labels}
mapped = data.map(tokenize, num_proc=int(sys.argv[4]), remove_columns=data.column_names)
tokens = sum(len(x) for x in mapped["input_ids"])
print(json.dumps({"seconds": time.perf_counter() - started, "tokens": tokens}))
"""


def tree_rss_kb(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak tree RSS in KB, stdout) of a command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_kb(process.pid))
        time.sleep(0.02)
    out = process.stdout.read() if process.stdout else ""
    if process.returncode:
        raise SystemExit(f"failed: {' '.join(command)}")
    return time.perf_counter() - started, peak, out


def lossmask_prepare(corpus: Path, out: Path) -> tuple[float, int, int]:
    seconds, peak, _ = measure(
        [sys.executable, "-m", "lossmask.cli", "prepare", str(corpus), "--tokenizer", str(TOKENIZER), "--out",
         str(out), "--fresh", "-q"]
    )  # fmt: skip
    manifest = json.loads((out / "_manifest.json").read_text())
    return seconds, peak, manifest["totals"]["tokens"] + manifest["totals"]["rows"]  # tokens = positions + 1/row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--skip-trl", action="store_true", help="leave out (b), e.g. without transformers")
    args = parser.parse_args()
    if not TOKENIZER.is_dir():
        print(f"the real-world kit is not at {KIT}; set LOSSMASK_REALWORLD", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="lossmask-bench-"))
    corpus, big = work / "corpus.jsonl", work / "corpus_x10.jsonl"
    count = build_corpus(corpus, args.conversations)
    big.write_text(corpus.read_text(encoding="utf-8") * 10, encoding="utf-8")
    print(f"corpus: {count:,} conversations ({corpus.stat().st_size / 1e6:.1f} MB), SmolLM2 tokenizer, {CORES} cores\n")

    rows = []
    _, _, out = measure([sys.executable, "-c", RAW, str(corpus), str(TOKENIZER)])
    raw = json.loads(out)
    a = raw["tokens"] / raw["seconds"]
    rows.append(("(a) tokenizers encode_batch", raw["tokens"], raw["seconds"], a, None))
    b = None
    if not args.skip_trl:
        _, peak_b, out = measure(
            [sys.executable, "-c", TRL, str(corpus), str(TOKENIZER), str(TAGGED_TEMPLATE), str(CORES)]
        )
        trl = json.loads(out)
        b = trl["tokens"] / trl["seconds"]
        rows.append(("(b) datasets.map + apply_chat_template", trl["tokens"], trl["seconds"], b, peak_b))
    seconds_c, peak_c, tokens_c = lossmask_prepare(corpus, work / "out")
    c = tokens_c / seconds_c
    rows.append(("(c) lossmask prepare (end to end)", tokens_c, seconds_c, c, peak_c))
    seconds_10, peak_10, tokens_10 = lossmask_prepare(big, work / "out10")
    rows.append(("(c) lossmask prepare, 10x input", tokens_10, seconds_10, tokens_10 / seconds_10, peak_10))

    print(f"{'path':42} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} {'peak RSS':>10}")
    for name, tokens, secs, rate, peak in rows:
        rss = f"{peak / 1024:,.0f} MB" if peak else "-"
        print(f"{name:42} {tokens:>12,} {secs:>8.2f} {rate:>12,.0f} {rss:>10}")
    print(f"\nc/a = {c / a:.2f} (goal >= 0.8)")
    if b:
        print(f"c/b = {c / b:.2f} (goal >= 2.5)")
    print(f"peak RSS 10x / 1x = {peak_10 / peak_c:.2f} (goal <= 1.2)")
    print("(a) times encoding only, in-process; (b) and (c) include process start-up, reading and writing.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
