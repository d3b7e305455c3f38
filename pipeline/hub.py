"""Tokenizers from the Hugging Face Hub: `org/name` (or `org/name@revision`) -> a local folder of its tokenizer
files, for `load_tokenizer`.

Precedence, decided here and documented in docs/export.md:
1. an existing local path always wins: a `tokenizer.json`, or a folder (even one named like `org/name`);
2. otherwise a string shaped `org/name[@revision]` is fetched with `huggingface_hub.snapshot_download`, asking
   only for the tokenizer files (`TOKENIZER_FILES`, a few hundred KB to a few MB; never weights). It comes from
   the local Hugging Face cache when the files are there, which also works offline;
3. anything else is a missing path.

`huggingface_hub` stays optional: it is imported only when a Hub id is used. Offline (`HF_HUB_OFFLINE=1`, or no
network) with nothing cached, or without `huggingface_hub`, the job stops with one message that says how to
point `--tokenizer` at a local folder instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import SetupError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json"]


def looks_like_hub_id(spec: str) -> bool:
    return HUB_ID.fullmatch(spec) is not None and not spec.endswith((".json", ".jinja"))


def local_folder_hint(repo_id: str) -> str:
    return (
        f"where there is network, run `hf download {repo_id} {' '.join(TOKENIZER_FILES[:2])} --local-dir DIR` "
        f"(or save it with transformers: AutoTokenizer.from_pretrained({repo_id!r}).save_pretrained(DIR)), "
        "copy DIR here and pass --tokenizer DIR"
    )


def resolve_hub_tokenizer(spec: str) -> Path:
    """The local folder holding the tokenizer files of Hub repository `spec` (downloaded or from the cache)."""
    repo_id, _, revision = spec.partition("@")
    try:
        import huggingface_hub
    except ImportError:
        raise SetupError(
            f"tokenizer {spec!r} is not a local path; fetching it from the Hugging Face Hub needs huggingface_hub "
            f"(pip install huggingface_hub). Or {local_folder_hint(repo_id)}"
        ) from None
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision or None, allow_patterns=list(TOKENIZER_FILES)
        )
    except Exception as exc:
        raise SetupError(explain_hub_error(spec, repo_id, revision, exc)) from None
    location = Path(folder)
    if not (location / "tokenizer.json").is_file():
        raise SetupError(
            f"the Hub repository {repo_id} has no tokenizer.json (a fast tokenizer is needed): convert it once with "
            f"transformers, AutoTokenizer.from_pretrained({repo_id!r}).save_pretrained(DIR), and pass --tokenizer DIR"
        )
    return location


def explain_hub_error(spec: str, repo_id: str, revision: str, exc: Exception) -> str:
    """One message for each way the Hub can fail, by exception class name (stable across huggingface_hub versions)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "GatedRepoError" in names:
        return (
            f"the Hub repository {repo_id} is gated: accept its terms on the Hub and log in (`hf auth login` or "
            f"HF_TOKEN), or {local_folder_hint(repo_id)}"
        )
    if "RevisionNotFoundError" in names:
        return f"the Hub repository {repo_id} has no revision {revision!r}"
    if "RepositoryNotFoundError" in names:
        return (
            f"tokenizer {spec!r} is neither a local path nor a Hub repository (a private one needs `hf auth login` "
            "or HF_TOKEN); pass a tokenizer.json, a model folder or an existing Hub id org/name"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError"}:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        return (
            f"tokenizer {spec!r} is not a local path, {why}, and its files are not in the local Hugging Face "
            f"cache: {local_folder_hint(repo_id)}"
        )
    return (
        f"could not fetch the tokenizer files of {repo_id} from the Hugging Face Hub ({exc}); "
        f"or {local_folder_hint(repo_id)}"
    )


HUB_DATASET = re.compile(r"hf://datasets/([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(@[\w./-]+)?/?")


def dataset_folder_hint(repo_id: str) -> str:
    return (
        f"where there is network, run `hf download {repo_id} --repo-type dataset --local-dir DIR` (or save it with "
        f"datasets: load_dataset({repo_id!r}).save_to_disk(DIR)), copy DIR here and give DIR as the path"
    )


def resolve_hub_dataset(url: str) -> Path:
    """The local folder of Hub dataset `hf://datasets/org/name[@revision]` (downloaded or from the cache), read
    like any `load_dataset`-style folder. Offline with nothing cached, one message says how to use a local copy."""
    match = HUB_DATASET.fullmatch(url)
    if match is None:
        raise SetupError(f"input {url!r}: a Hub dataset is written hf://datasets/org/name[@revision]")
    repo_id, revision = match.group(1), (match.group(2) or "@")[1:]
    try:
        import huggingface_hub
    except ImportError:
        raise SetupError(
            f"input {url!r} is on the Hugging Face Hub, which needs huggingface_hub (pip install huggingface_hub). "
            f"Or {dataset_folder_hint(repo_id)}"
        ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", revision=revision or None)
    except Exception as exc:
        names = {cls.__name__ for cls in type(exc).__mro__}
        if offline or names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError"}:
            why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
            raise SetupError(
                f"input {url!r}: {why} and the dataset is not in the local Hugging Face cache: "
                f"{dataset_folder_hint(repo_id)}"
            ) from None
        hint = dataset_folder_hint(repo_id)
        raise SetupError(f"input {url!r}: could not fetch it from the Hub ({exc}); or {hint}") from None
    return Path(folder)
