"""Digests of what `prepare` writes, on the fixtures and on the real-world kit: the regression check for refactors
that must not change a byte (and the record of which ones did, and why).

    python scripts/output_digests.py --write out/digests.json         # record
    python scripts/output_digests.py --compare out/digests.json       # what changed since, job by job

Each job is a `prepare` run in this process (one worker). Its digest is the sha256 of every shard file and of
`_rejects.jsonl`, plus the manifest's record accounting; the manifest itself is left out, since it holds version
and timing-free but path-dependent fields. Kit jobs are skipped, saying so, when ../shared/realworld is absent.
With `--rows`, a comparison looks only at the rows (in order, whatever shards hold them), the rejects and the
records: for a change that moves shard boundaries or names and nothing else.

Deliberate changes of the shard files (each with the command that shows what stayed):

- 0.x, work units (`jobs/units.py`, issue #14): a job whose rows go straight to shards writes each work unit's
  rows into shards of its own (`shard-u00000-000.arrow`), so that a Ray task can write its unit anywhere. Shard
  names and boundaries change; the rows, `_rejects.jsonl` and the records do not:
  `python scripts/output_digests.py --compare BEFORE.json --rows`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
KIT = Path(os.environ.get("LOSSMASK_REALWORLD", ROOT.parent / "shared" / "realworld"))
DEMO_INPUTS = ["openai.jsonl", "sharegpt.json", "alpaca.json", "prompt_completion.jsonl", "tools.jsonl"]
# Option sets run on the demo inputs: each exercises a different part of the mask and length policy.
DEMO_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "last-assistant": {"mask": "last-assistant"},
    "all": {"mask": "all"},
    "no-eot": {"train_end_of_turn": False},
    "no-reasoning": {"train_reasoning": False},
    "roles-user": {"train_roles": ["assistant", "user"]},
    "split-64": {"max_length": 64, "overflow": "split"},
    "truncate-48-left": {"max_length": 48, "truncate_side": "left"},
    "drop-32": {"max_length": 32, "overflow": "drop"},
    "pack-256": {"pack": 256},
    "concat-128": {"concat": 128},
    "chatml": {"chat_template": "chatml"},
    "faithful-only": {"unfaithful_turns": "faithful-only"},
    "as-rendered": {"unfaithful_turns": "as-rendered"},
}
KIT_TOKENIZERS = ["smollm2", "mistral-v3", "mistral-nemo-tekken", "llama3-style", "gemma-style", "phi3-style"]
KIT_CHAT_FILES = [
    "llamafactory/alpaca_en_demo.json",
    "llamafactory/glaive_toolcall_en_demo.json",
    "llamafactory/identity.json",
    "llamafactory/reason_tool_use_demo_50.jsonl",
    "llamafactory/v1_sft_demo.jsonl",
    "torchtune/chat_tiny.json",
    "fastchat/dummy_conversation.json",
]


def digest_folder(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    files = sorted(p for p in out.iterdir() if p.suffix == ".arrow" or p.name == "_rejects.jsonl")
    return {
        "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
        "rows": rows_digest(out, manifest),
        "records": manifest["records"],
    }


def rows_digest(out: Path, manifest: dict[str, Any]) -> str:
    """The sha256 of every row in manifest order, whatever the shards they are in: equal across a change of
    shard boundaries or names alone (`--compare --rows` compares only this and the records)."""
    import pyarrow as pa

    tables = [pa.ipc.open_file(out / shard["file"]).read_all() for shard in manifest["shards"]]
    if not tables:
        return hashlib.sha256(b"").hexdigest()
    sink = pa.BufferOutputStream()
    table = pa.concat_tables(tables).combine_chunks()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def run_job(inputs: list[str], tokenizer: str, options: dict[str, Any], scratch: Path) -> dict[str, Any]:
    from lossmask.jobs.prepare import prepare
    from lossmask.pipeline.config import PrepareConfig

    out = scratch / "out"
    config = PrepareConfig.from_mapping(
        {"inputs": inputs, "tokenizer": tokenizer, "out": str(out), "workers": 1, "resume": False, **options}
    )
    try:
        manifest = prepare(config)
    except Exception as exc:  # a job that cannot run is a result too (its message is the digest)
        return {"error": f"{type(exc).__name__}: {exc}"}
    result = digest_folder(out, manifest)
    for path in out.iterdir():
        path.unlink()
    return result


def jobs(scratch: Path) -> Iterator[tuple[str, list[str], str, dict[str, Any]]]:
    demo = [str(FIXTURES / "data" / name) for name in DEMO_INPUTS]
    for name, options in DEMO_VARIANTS.items():
        yield f"demo/{name}", demo, str(FIXTURES / "tokenizer"), options
    if not KIT.is_dir():
        print(f"kit jobs skipped: {KIT} is absent", file=sys.stderr)
        return
    data = [str(KIT / "data" / name) for name in KIT_CHAT_FILES]
    for tokenizer in KIT_TOKENIZERS:
        yield f"kit-data/{tokenizer}", data, str(KIT / "tokenizers" / tokenizer), {}
    # Every kit template on the kit's chat data, with a STYLE tokenizer that knows the template's markers.
    sys.path.insert(0, str(ROOT))
    from tests.kit import kit_templates, save_style_folder

    for name, source in kit_templates():
        folder = save_style_folder(scratch / "style" / name.replace("/", "__"), source)
        yield f"kit-template/{name}", data, str(folder), {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", help="write the digests to this JSON file")
    parser.add_argument("--compare", help="compare with digests written earlier")
    parser.add_argument("--only", help="run only jobs whose name contains this text")
    parser.add_argument("--rows", action="store_true", help="compare rows, rejects and records only")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    # A fixed scratch folder: the style tokenizers' paths are part of the template names rejects mention.
    scratch = Path(tempfile.gettempdir()) / "lossmask-output-digests"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name, inputs, tokenizer, options in jobs(scratch):
        if args.only and args.only not in name:
            continue
        results[name] = run_job(inputs, tokenizer, options, scratch)
        print(f"{name}: {json.dumps(results[name].get('records', results[name]))[:100]}")
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if args.compare:
        before = json.loads(Path(args.compare).read_text(encoding="utf-8"))

        def seen(result: dict[str, Any]) -> dict[str, Any]:
            if not args.rows or "error" in result:
                return result
            rejects = result.get("files", {}).get("_rejects.jsonl")
            return {"rows": result.get("rows"), "rejects": rejects, "records": result.get("records")}

        changed = [name for name in results if seen(before.get(name, {})) != seen(results[name])]
        missing = [name for name in before if name not in results]
        print(f"\n{len(results) - len(changed)} of {len(results)} jobs identical; {len(changed)} changed")
        for name in changed:
            print(f"  changed: {name}")
            old, new = before.get(name, {}), results[name]
            if old.get("records") != new.get("records"):
                print(f"    records before: {json.dumps(old.get('records'))[:300]}")
                print(f"    records after:  {json.dumps(new.get('records'))[:300]}")
        if missing and not args.only:
            print(f"  not run now: {', '.join(missing)}")
        sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
