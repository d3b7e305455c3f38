"""`make bench`: lossmask prepare against the raw tokenizer and the TRL/transformers path, side by side in one run.

Corpus: every conversation in ../shared/realworld/data that has an assistant answer, normalized by lossmask's own
parsers to OpenAI `messages` JSONL, repeated to at least N conversations (20k by default; `--conversations
200000`). Tokenizer: SmolLM2. Paths, each run as its own process, interleaved over `--rounds` rounds (A B C A B C
...), so that a machine that slows down mid-run slows every path alike:

  limit    `tokenizers` `encode_batch` over the same rendered text, in-process, as many threads as cores: the
           encoding call alone (no reading, rendering, masks, verification or writing); its time is the call's;
  encoder  the same texts through the tiktoken BPE that `--encoder auto` uses (ids only, like the limit), with
           its ids compared to `tokenizers`' on every 50th text;
  trl      `datasets.map` + `apply_chat_template(tokenize=True, return_assistant_tokens_mask=True)` on a
           generation-tagged copy of SmolLM2's template, num_proc = cores, then labels (-100 where unmasked);
  prepare  `lossmask prepare` end to end as a user runs it (process start, read, parse, render, verify every row,
           tokenize, mask, write shards and manifest), with 1, 2 and 4 workers (4 workers on 2 cores is a
           simulation: read its CPU-seconds per token), with the default encoder and with `--encoder tokenizers`.

For each: the median and min-max over rounds of wall seconds, tokens/s, tokens per CPU-second of the whole process
tree (parent, forkserver, workers: sampled from /proc every 10 ms, so short-lived workers count too; GNU time
misses forkserver workers) and its peak RSS; and the load average when each round started. Numbers to read, never
assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
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
from pathlib import Path
from lossmask.pipeline.batch import JobContext
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.formats import parse
from lossmask.pipeline.read import iter_inputs
context = JobContext.from_config(PrepareConfig(tokenizer=sys.argv[2], encoder="tokenizers"))
texts = []
for record in iter_inputs([Path(sys.argv[1])]):
    for example in context.renderer.render(parse(record.value, record.source, None, context.format_options)):
        texts.append(example.text)
tokenizer = context.tokenizer.tokenizer
if sys.argv[3] == "tiktoken":  # the fast encoder's BPE alone, on the same texts; its ids checked against tokenizers
    from lossmask.pipeline.encoders import fast_encoder
    encoding = fast_encoder(tokenizer)[0].encoding
    encode = lambda batch: encoding.encode_batch(batch, allowed_special="all")
else:
    encode = lambda batch: [e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False)]
started, cpu = time.perf_counter(), time.process_time()
tokens = 0
for i in range(0, len(texts), 1024):
    tokens += sum(len(ids) for ids in encode(texts[i : i + 1024]))
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
if sys.argv[3] == "tiktoken":
    sample = texts[::50]
    same = sum(a == e.ids for a, e in zip(encode(sample), tokenizer.encode_batch(sample, add_special_tokens=False)))
    print(f"tiktoken ids equal to tokenizers' on {same} of {len(sample)} sampled rows", file=sys.stderr)
print(json.dumps({"seconds": seconds, "cpu": cpu, "tokens": tokens}))
"""

TRL = """
import json, sys, time
import datasets
from transformers import PreTrainedTokenizerFast
datasets.disable_progress_bars()
datasets.disable_caching()
tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[2])
template = open(sys.argv[3]).read()
data = datasets.load_dataset("json", data_files=sys.argv[1], split="train")
def tokenize(example):
    out = tokenizer.apply_chat_template(example["messages"], chat_template=template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    labels = [t if m else -100 for t, m in zip(out["input_ids"], out["assistant_masks"])]
    return {"input_ids": out["input_ids"], "labels": labels}
mapped = data.map(tokenize, num_proc=int(sys.argv[4]), remove_columns=data.column_names)
print(json.dumps({"tokens": sum(len(x) for x in mapped["input_ids"])}))
"""


def process_tree() -> tuple[dict[int, int], dict[int, list[int]]]:
    """(CPU ticks of every process, children of every process), from /proc."""
    ticks: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        ticks[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks, children


def descendants(root: int, children: dict[int, list[int]]) -> list[int]:
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def sample_tree(root: int, last_ticks: dict[int, int]) -> list[int]:
    """The process tree under `root` now, with each process's CPU ticks so far kept in `last_ticks` (a process
    that has exited keeps its last reading)."""
    ticks, children = process_tree()
    tree = descendants(root, children)
    for pid in tree:
        if pid in ticks:
            last_ticks[pid] = max(last_ticks.get(pid, 0), ticks[pid])
    return tree


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(command: list[str], retried: bool = False) -> dict[str, float | str]:
    """Wall seconds, CPU seconds of the whole process tree, its peak RSS (KB), and stdout, of a command. A run that
    fails is reported (exit status or signal, and the end of its stderr) and run once more; a second failure
    stops the bench."""
    hz = os.sysconf("SC_CLK_TCK")
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=ROOT)
        last_ticks: dict[int, int] = {}
        peak = 0
        while process.poll() is None:
            tree = sample_tree(process.pid, last_ticks)
            peak = max(peak, sum(rss_kb(pid) for pid in tree))
            time.sleep(0.01)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    sys.stderr.write(stderr)
    if process.returncode:
        code = process.returncode
        status = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        tail = " | ".join(stderr.strip().splitlines()[-3:]) or "(nothing on stderr)"
        print(f"failed ({status}; {tail}): {' '.join(command)}", file=sys.stderr)
        if retried:
            raise SystemExit(1)
        return measure(command, retried=True)
    return {"wall": wall, "cpu": sum(last_ticks.values()) / hz, "rss": peak, "out": stdout}


def prepare_command(corpus: Path, out: Path, workers: int, encoder: str) -> list[str]:
    return [
        sys.executable, "-m", "lossmask.cli", "prepare", str(corpus), "--tokenizer", str(TOKENIZER),
        "--out", str(out), "--fresh", "-q", "--workers", str(workers), "--encoder", encoder,
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-trl", action="store_true", help="leave out the TRL path, e.g. without transformers")
    args = parser.parse_args()
    if not TOKENIZER.is_dir():
        print(f"the real-world kit is not at {KIT}; set LOSSMASK_REALWORLD", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="lossmask-bench-"))
    corpus = work / "corpus.jsonl"
    count = build_corpus(corpus, args.conversations)
    print(f"corpus: {count:,} conversations ({corpus.stat().st_size / 1e6:.1f} MB), SmolLM2, {CORES} cores\n")
    paths: dict[str, list[str]] = {
        "limit: encode_batch (in-process)": [sys.executable, "-c", RAW, str(corpus), str(TOKENIZER), "tokenizers"],
        "encoder: tiktoken BPE alone (in-process)": [
            sys.executable,
            "-c",
            RAW,
            str(corpus),
            str(TOKENIZER),
            "tiktoken",
        ],
    }
    if not args.skip_trl:
        paths["trl: datasets.map + apply_chat_template"] = [
            sys.executable, "-c", TRL, str(corpus), str(TOKENIZER), str(TAGGED_TEMPLATE), str(CORES)
        ]  # fmt: skip
    for workers in (1, 2, 4):
        for encoder in ("auto", "tokenizers"):
            paths[f"prepare --workers {workers} --encoder {encoder}"] = prepare_command(
                corpus, work / "out", workers, encoder
            )
    results: dict[str, list[dict[str, float | str]]] = {name: [] for name in paths}
    loads = []
    tokens = 0
    for round_ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, command in paths.items():
            result = measure(command)
            if name.startswith(("limit", "encoder")):
                raw = json.loads(str(result["out"]))
                result["wall"], result["cpu"] = raw["seconds"], raw["cpu"]
                if name.startswith("limit"):
                    tokens = raw["tokens"]
                else:
                    assert raw["tokens"] == tokens, (raw["tokens"], tokens)
            results[name].append(result)
        print(f"round {round_ + 1} done (load average at its start {loads[-1]:.2f})", file=sys.stderr)
    manifest = json.loads((work / "out" / "_manifest.json").read_text())
    positions = manifest["totals"]["tokens"] + manifest["totals"]["rows"]  # tokens = positions + 1 per row
    assert positions == tokens, (positions, tokens)  # every path counts the same tokens

    def stat(values: list[float]) -> str:
        return f"{statistics.median(values):>9,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    print(f"{tokens:,} tokens; {args.rounds} interleaved rounds; load average at each round's start: "
          + ", ".join(f"{x:.2f}" for x in loads) + "\n")  # fmt: skip
    header = f"{'path':44} {'wall s':>7} {'tokens/s (min-max)':>28} {'tokens/CPU-s (min-max)':>30} {'peak RSS':>9}"
    print(header)
    medians = {}
    for name, runs in results.items():
        walls = [float(r["wall"]) for r in runs]
        rates = [tokens / float(r["wall"]) for r in runs]
        per_cpu = [tokens / float(r["cpu"]) for r in runs]
        rss = statistics.median(float(r["rss"]) for r in runs) / 1024
        medians[name] = (statistics.median(rates), statistics.median(per_cpu))
        rss_text = f"{rss:,.0f} MB" if not name.startswith(("limit", "encoder")) else "-"
        print(f"{name:44} {statistics.median(walls):>7.2f} {stat(rates):>28} {stat(per_cpu):>30} {rss_text:>9}")
    limit_rate, limit_cpu = medians["limit: encode_batch (in-process)"]
    print()
    for name, (rate, per_cpu) in medians.items():
        if name.startswith(("prepare", "encoder")):
            line = f"{name:44} x limit: {rate / limit_rate:.2f} (wall), {per_cpu / limit_cpu:.2f} (per CPU-s)"
            trl = medians.get("trl: datasets.map + apply_chat_template")
            if trl:
                line += f"; x trl: {rate / trl[0]:.2f} (wall), {per_cpu / trl[1]:.2f} (per CPU-s)"
            print(line)
    print("\nlimit is one in-process encode_batch call; prepare and trl are whole processes, start-up included.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
