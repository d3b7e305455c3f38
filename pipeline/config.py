"""The job's configuration: one dataclass, loadable from YAML or TOML, overridden by command-line flags.

The resolved configuration is written into the manifest, so every shard set says how it was made.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import SetupError
from ..schemas.records import ROLES
from ..schemas.shards import LAYOUT_PACKED, LAYOUT_ROWS
from .encoders import ENCODER_NAMES
from .fit import OVERFLOW_POLICIES, TRUNCATE_SIDES, LengthPolicy
from .formats import FORMAT_NAMES, PREFERENCE_LAYOUTS
from .formats.options import DEFAULT_FIELDS, MAX_MESSAGE_CHARS, MAX_RECORD_BYTES, FormatOptions
from .mask import MASK_MODES, UNFAITHFUL_POLICIES, MaskPolicy
from .reasoning import ReasoningTags
from .render import DROPPED_POLICIES, REASONING_FALLBACKS, SPECIAL_POLICIES, TOOL_CALL_IDS, RenderOptions
from .templates.environment import DEFAULT_TEMPLATE_DATE
from .templates.limits import DEFAULT_MAX_CHARS, DEFAULT_TIMEOUT, RenderLimits

ENGINES = ("local", "ray")

CHOICES: dict[str, tuple[str, ...]] = {
    "engine": ENGINES,
    "format": FORMAT_NAMES,
    "mask": MASK_MODES,
    "overflow": OVERFLOW_POLICIES,
    "truncate_side": TRUNCATE_SIDES,
    "special_tokens_in_content": SPECIAL_POLICIES,
    "unfaithful_turns": UNFAITHFUL_POLICIES,
    "dropped_messages": DROPPED_POLICIES,
    "reasoning_fallback": REASONING_FALLBACKS,
    "tool_call_ids": TOOL_CALL_IDS,
    "encoder": (*ENCODER_NAMES, "tiktoken-if-proven"),
    "dedup": ("exact",),
}

# The one option table: a flag's long name is its config key (with `-` or `_`). Where a field's Python name
# differs from the name users write, this maps the written name to the field; the field's own name (the older
# spelling) keeps working. `cli_options.flag` names every flag from here.
KEY_ALIASES: dict[str, str] = {
    "train_eot": "train_end_of_turn",
    "generation_tags": "use_generation_tags",
}
FLAG_NAMES: dict[str, str] = {field_name: key for key, field_name in KEY_ALIASES.items()}


def canonical_key(key: str) -> str:
    """The field a config key or flag name sets: dashes as underscores, aliases resolved."""
    key = key.replace("-", "_")
    return KEY_ALIASES.get(key, key)


def unknown_key(key: str, valid: Any, where: str = "") -> SetupError:
    """One line naming the closest valid key (difflib), for a key found nowhere in `valid`."""
    names = sorted(set(valid))
    close = difflib.get_close_matches(key.replace("-", "_"), names, n=1, cutoff=0.0)
    place = f" in {where}" if where else ""
    hint = f": did you mean {close[0]!r}?" if close else ""
    return SetupError(f"unknown config key {key!r}{place}{hint}")


def check_keys(values: dict[str, Any], valid: Any, where: str) -> None:
    """Raise for the first key of `values` (in order) that is not in `valid` (names as written, `-` = `_`)."""
    names = set(valid)
    for key in values:
        if not isinstance(key, str) or key.replace("-", "_") not in names:
            raise unknown_key(str(key), names, where)


def check_roles(roles: Any, where: str) -> None:
    """`roles` maps the data's role names (any) to lossmask's roles, which must be valid."""
    if not isinstance(roles, dict):
        raise SetupError(f"{where} must map the data's role names to {', '.join(ROLES)}")
    for name, role in roles.items():
        if role not in ROLES:
            close = difflib.get_close_matches(str(role), ROLES, n=1, cutoff=0.0)
            raise SetupError(
                f"{where}: {name!r} maps to unknown role {role!r}: did you mean {close[0]!r}? "
                f"(roles are {', '.join(ROLES)})"
            )


@dataclass
class PrepareConfig:
    inputs: list[str] = field(default_factory=list)
    tokenizer: str = ""
    out: str = ""
    chat_template: str | None = None  # a .jinja file or a built-in name; None = the tokenizer's own
    format: str | None = None  # None = detect per file
    mask: str = "assistant"
    train_roles: list[str] = field(default_factory=lambda: ["assistant"])
    train_end_of_turn: bool = True
    train_reasoning: bool = True
    train_tool_calls: bool = True
    use_generation_tags: bool = True
    max_length: int | None = None  # positions per row at most (tokens - 1); --pack N sets it to N when unset
    overflow: str = "truncate"
    truncate_side: str = "right"
    pack: int | None = None  # rows of at most N positions holding whole documents (best-fit decreasing)
    concat: int | None = None  # rows of exactly N positions cut from the stream of documents (pretraining)
    pack_window: int = 100_000  # documents packed together at most; 0 = the whole dataset at once
    special_tokens_in_content: str = "escape"
    unfaithful_turns: str = "split"
    dropped_messages: str = "reject"
    reasoning_fallback: str = "inline"
    reasoning_tags: str | None = None  # "OPEN,CLOSE"; None = the template's own, else <think>,</think>
    allow_text_markers: bool = False
    tool_call_ids: str = "keep"  # "generate": ids derived from the record where a call has none or a bad one
    text_append_eos: bool = True
    template_date: str = DEFAULT_TEMPLATE_DATE
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    system: str | dict[str, Any] | None = None  # a system prompt added where a conversation has none (docs/config.md)
    # Several inputs, each its own dataset (docs/config.md): entries as `DATASET_KEYS` says; the options above are
    # every entry's defaults. Normalized by `normalize_dataset`, so the manifest shows what each entry meant.
    datasets: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] | None = None  # {fraction: F} | {count: N} | {datasets: [...]}: OUT/eval/
    dedup: str | None = None  # "exact": a record whose normalized messages an earlier one had is dropped
    seed: int = 0  # every sample and the eval split are drawn from it
    alpaca_join: str = "\n\n"
    strict: bool = False
    engine: str = "local"  # "local" (this machine) or "ray" (Ray Data, locally or on a cluster)
    encoder: str = "auto"  # auto: tiktoken where proven identical on inputs of 4 MB or more; tokenizers; tiktoken
    workers: int | None = None  # None = every core
    resume: bool = True  # finish a killed run of the same job from its checkpoint
    overwrite: bool = False  # replace another job's output in --out (never files lossmask cannot prove its own)
    batch_size: int = 256
    shard_max_rows: int = 100_000
    shard_max_bytes: int = 256 << 20
    # Inputs are cut into work units of about this many bytes (`pipeline.units`); each unit's rows go to shards of
    # its own, so where units end is part of the output (docs/scale.md, "Work units").
    unit_bytes: int = 64 << 20
    # Limits on one record, so that no input costs more than bounded memory and time (docs/prepare.md, "Limits"):
    # reading skips a longer record (record_too_large), parsing rejects a longer message (message_too_long), and
    # each rendering has a time and a size budget (template_timeout, template_output_too_large).
    max_record_bytes: int = MAX_RECORD_BYTES
    max_message_chars: int = MAX_MESSAGE_CHARS
    template_timeout: float = DEFAULT_TIMEOUT  # seconds
    template_max_chars: int = DEFAULT_MAX_CHARS

    @classmethod
    def config_keys(cls) -> set[str]:
        """Every name a config file may use at the top level: the fields and their aliases."""
        return {f.name for f in fields(cls)} | set(KEY_ALIASES)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> PrepareConfig:
        """A config from a file's or the command line's mapping; any unknown key, at any depth, is a SetupError
        naming the closest valid key."""
        check_keys(values, cls.config_keys(), "the config")
        resolved: dict[str, Any] = {}
        for key, value in values.items():
            name = canonical_key(key)
            if name in resolved:
                raise SetupError(f"config key {key!r} is given twice (as {name!r} too): keep one")
            resolved[name] = value
        return cls(**resolved)

    def __post_init__(self) -> None:
        """Normalize what config files and flags may spell loosely, then check the whole: every config is valid."""
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if isinstance(self.train_roles, str):
            self.train_roles = [r.strip() for r in self.train_roles.split(",") if r.strip()]
        if self.pack is not None and self.max_length is None:
            self.max_length = self.pack  # a document longer than a row goes through --overflow first
        self._validate_maps()
        self.system = normalize_system(self.system, "system")
        self._validate_datasets()
        self.validate()

    def _validate_datasets(self) -> None:
        if not isinstance(self.datasets, list):
            raise SetupError("datasets must be a list of entries, each with a path")
        self.datasets = [normalize_dataset(entry, f"datasets[{i}]") for i, entry in enumerate(self.datasets)]
        if self.datasets and self.inputs:
            raise SetupError("inputs and datasets are two ways to name the data: put the inputs in a datasets entry")
        unique_names(self.datasets, "datasets")
        if self.eval is not None:
            self.eval = normalize_eval(self.eval)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SetupError(f"seed must be a whole number, not {self.seed!r}")
        for entry in (*self.datasets, *(self.eval or {}).get("datasets", [])):
            if entry.get("format", self.format) in PREFERENCE_LAYOUTS:
                raise SetupError(
                    f"dataset {entry['name']!r}: preference and KTO data are prepared from inputs (one dataset, "
                    "docs/preference.md); datasets entries hold SFT data"
                )
        if self.dedup is not None and self.format in PREFERENCE_LAYOUTS:
            raise SetupError(f"dedup compares conversations; {self.format} data is not deduplicated")
        for index in range(len(self.datasets)):
            self.for_dataset(index)  # each entry's options make a valid job too

    def _validate_maps(self) -> None:
        """The nested mappings: `fields` keys are lossmask's field names, `roles` values its roles."""
        if not isinstance(self.fields, dict):
            raise SetupError("fields must map lossmask's field names to the data's, e.g. {messages: dialog}")
        check_keys(self.fields, DEFAULT_FIELDS, "fields")
        check_roles(self.roles, "roles")
        if not isinstance(self.template_kwargs, dict):
            raise SetupError("template_kwargs must be a mapping of template variables to values")

    def validate(self) -> None:
        """Raise SetupError, saying what to fix, when the options do not make a job. Changes nothing."""
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise SetupError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        if self.reasoning_tags is not None:
            try:
                ReasoningTags.parse(self.reasoning_tags)
            except ValueError as exc:
                raise SetupError(str(exc)) from None
        if self.max_length is not None and self.max_length < 1:
            raise SetupError("max_length must be at least 1")
        self._validate_packing()
        if self.preference:
            self._validate_preference()
        if self.workers is not None and self.workers < 1:
            raise SetupError("workers must be at least 1")
        if self.batch_size < 1 or self.shard_max_rows < 1 or self.shard_max_bytes < 1 or self.unit_bytes < 1:
            raise SetupError("batch_size, shard_max_rows, shard_max_bytes and unit_bytes must be positive")
        for name in ("max_record_bytes", "max_message_chars", "template_timeout", "template_max_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise SetupError(f"{name} must be a positive number, not {value!r}")

    def _validate_packing(self) -> None:
        if self.pack is not None and self.concat is not None:
            raise SetupError("--pack and --concat are two ways to fill rows: choose one")
        for name in ("pack", "concat"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SetupError(f"{name} must be at least 1 position")
        if self.pack_window < 0:
            raise SetupError("pack_window must be 0 (the whole dataset) or a number of documents")
        if self.pack is not None and self.max_length is not None and self.max_length > self.pack:
            raise SetupError(
                f"max_length {self.max_length} is longer than the packed rows (pack {self.pack}): "
                "leave --max-length out (it defaults to --pack) or make it at most --pack"
            )
        if self.concat is not None and not self.text_append_eos:
            raise SetupError("--concat joins documents with the end-of-text token: it needs text_append_eos")

    def _validate_preference(self) -> None:
        """Preference data makes one unpacked row per record whose prompt never trains (docs/preference.md)."""
        made = "pairs" if self.format == "preference" else "KTO rows"
        if self.pack is not None or self.concat is not None:
            raise SetupError(
                f"--pack and --concat put several documents in a row; {self.format} data makes {made}, "
                "one per record, unpacked"
            )
        if self.overflow == "split":
            raise SetupError(
                f"--overflow split would cut an answer into windows; {self.format} data never cuts "
                "its answers: use --overflow truncate (the prompt is cut from the left) or drop"
            )
        if self.mask == "all":
            raise SetupError(f"--mask all trains the prompt; {self.format} data trains its answers only")

    @property
    def preference(self) -> bool:
        """Whether the job reads preference data (`--format preference|kto`, or detected by `inputs.job_format`)."""
        return self.format in PREFERENCE_LAYOUTS

    @property
    def layout(self) -> str:
        """The layout the job writes: the preference format's, else SFT rows, packed with --pack or --concat."""
        if self.format in PREFERENCE_LAYOUTS:
            return PREFERENCE_LAYOUTS[self.format]
        return LAYOUT_ROWS if self.pack is None and self.concat is None else LAYOUT_PACKED

    def require_paths(self) -> None:
        if not self.inputs and not self.datasets:
            raise SetupError("no input given: pass INPUT files or globs, or `inputs:` or `datasets:` in the config")
        if not self.tokenizer:
            raise SetupError("no tokenizer given: pass --tokenizer PATH (a tokenizer.json or a model folder)")
        if not self.out:
            raise SetupError("no output folder given: pass --out DIR")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_dataset(self, index: int) -> PrepareConfig:
        """The job's options as `datasets[index]` sees them: the entry's options over the job's (maps merged key by
        key). What the stages read of a dataset comes from here, as values (`batch.JobContext.for_dataset`)."""
        entry = self.datasets[index]
        changes: dict[str, Any] = {k: entry[k] for k in DATASET_OVERRIDES if k in entry}
        for name in ("fields", "roles", "template_kwargs"):
            if name in entry:
                changes[name] = {**getattr(self, name), **entry[name]}
        return replace(self, **changes, inputs=[], datasets=[], eval=None)

    def format_options(self) -> FormatOptions:
        system = self.system or {}
        return FormatOptions(
            fields=dict(self.fields),
            roles=dict(self.roles),
            alpaca_join=self.alpaca_join,
            max_record_bytes=int(self.max_record_bytes),
            max_message_chars=int(self.max_message_chars),
            system=system.get("content"),
            system_replace=bool(system.get("replace", False)),
        )

    def template_limits(self) -> RenderLimits:
        return RenderLimits(timeout=float(self.template_timeout), max_chars=int(self.template_max_chars))

    def render_options(self) -> RenderOptions:
        mask = MaskPolicy(
            mode=self.mask,
            train_roles=tuple(self.train_roles),
            train_end_of_turn=self.train_end_of_turn,
            train_reasoning=self.train_reasoning,
            train_tool_calls=self.train_tool_calls,
            use_generation_tags=self.use_generation_tags,
            unfaithful_turns=self.unfaithful_turns,
        )
        return RenderOptions(
            mask=mask,
            dropped_messages=self.dropped_messages,
            special_tokens_in_content=self.special_tokens_in_content,
            reasoning_fallback=self.reasoning_fallback,
            text_append_eos=self.text_append_eos,
            reasoning_tags=ReasoningTags.parse(self.reasoning_tags) if self.reasoning_tags else None,
            allow_text_markers=self.allow_text_markers,
            tool_call_ids=self.tool_call_ids,
        )

    def length_policy(self) -> LengthPolicy:
        return LengthPolicy(max_length=self.max_length, overflow=self.overflow, truncate_side=self.truncate_side)


# A `datasets:` entry. Besides its data (`path`: files, globs, folders, `hf://datasets/org/name`; `split` for a
# folder of splits) and its share (`sample`), it may set these options for its own records.
DATASET_OVERRIDES = (
    "format",
    "fields",
    "roles",
    "system",
    "mask",
    "train_roles",
    "train_end_of_turn",
    "train_reasoning",
    "train_tool_calls",
    "use_generation_tags",
    "template_kwargs",
)
DATASET_KEYS = ("name", "path", "split", "sample", *DATASET_OVERRIDES)
# The keys of an axolotl `datasets:` entry lossmask reads (docs/coming-from.md); `axolotl_entry` translates them.
AXOLOTL_KEYS = (
    "type",
    "field_messages",
    "message_property_mappings",
    "roles_to_train",
    "train_on_eos",
    "train_on_inputs",
    "ds_type",
)
EVAL_KEYS = ("fraction", "count", "datasets")
SYSTEM_KEYS = ("content", "replace")


def normalize_system(value: Any, where: str) -> dict[str, Any] | None:
    """`system: TEXT` (added where a conversation has no system message) or `{content: TEXT, replace: true}`
    (replaces the data's own system message too)."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"content": value, "replace": False}
    if not isinstance(value, dict):
        raise SetupError(f"{where} must be a text or {{content: TEXT, replace: true|false}}")
    check_keys(value, SYSTEM_KEYS, where)
    if not isinstance(value.get("content"), str):
        raise SetupError(f"{where}.content must be the system prompt's text")
    replace_ = value.get("replace", False)
    if not isinstance(replace_, bool):
        raise SetupError(f"{where}.replace must be true or false")
    return {"content": value["content"], "replace": replace_}


def normalize_dataset(entry: Any, where: str) -> dict[str, Any]:
    """A `datasets:` entry with every key checked and spelled as lossmask's field (aliases resolved, an axolotl
    entry translated, `path` a list, `system` a mapping, `name` given). Normalizing twice changes nothing."""
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict):
        raise SetupError(f"{where} must be a mapping with a path")
    allowed = set(DATASET_KEYS) | {k for k, v in KEY_ALIASES.items() if v in DATASET_KEYS} | set(AXOLOTL_KEYS)
    check_keys(entry, allowed, where)
    values = {canonical_key(key): value for key, value in entry.items()}
    values = axolotl_entry(values, where)
    path = values.get("path")
    if isinstance(path, str):
        path = [path]
    if not path or not isinstance(path, list) or not all(isinstance(p, str) for p in path):
        raise SetupError(f"{where} needs a path: a file, glob, folder or hf://datasets/org/name, or a list of them")
    values["path"] = path
    values.setdefault("name", default_name(path[0]))
    if not isinstance(values["name"], str) or not values["name"]:
        raise SetupError(f"{where}.name must be a non-empty text")
    if "fields" in values:
        if not isinstance(values["fields"], dict):
            raise SetupError(f"{where}.fields must map lossmask's field names to the data's")
        check_keys(values["fields"], DEFAULT_FIELDS, f"{where}.fields")
    if "roles" in values:
        check_roles(values["roles"], f"{where}.roles")
    if "system" in values:
        values["system"] = normalize_system(values["system"], f"{where}.system")
    if isinstance(values.get("train_roles"), str):
        values["train_roles"] = [r.strip() for r in values["train_roles"].split(",") if r.strip()]
    if "sample" in values:
        check_sample(values["sample"], f"{where}.sample")
    if "split" in values and not isinstance(values["split"], str):
        raise SetupError(f"{where}.split must be a split's name, e.g. train")
    return values


def default_name(path: str) -> str:
    """A dataset's name when its entry has none: the last part of its path without glob characters, suffixes."""
    parts = [p for p in path.rstrip("/").split("/") if p and not any(c in p for c in "*?[")]
    name = parts[-1] if parts else "dataset"
    return name.split(".", 1)[0] or name


def unique_names(entries: list[dict[str, Any]], where: str) -> None:
    names = [e["name"] for e in entries]
    for name in names:
        if names.count(name) > 1:
            raise SetupError(f"two {where} entries are named {name!r}: give each a name of its own (name: ...)")


def check_sample(value: Any, where: str) -> None:
    """`sample`: a number up to 1 is a fraction of the dataset, a whole number above 1 a count of records."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SetupError(f"{where} must be a fraction (0 < F <= 1) or a count of records (N > 1), not {value!r}")
    if value > 1 and value != int(value):
        raise SetupError(f"{where} above 1 is a count of records: a whole number, not {value!r}")


def normalize_eval(value: Any) -> dict[str, Any]:
    """`eval: {fraction: F}` (0 < F < 1) | `{count: N}` | `{datasets: [...]}` (entries as in `datasets`)."""
    if not isinstance(value, dict):
        raise SetupError("eval must be {fraction: F}, {count: N} or {datasets: [...]}")
    check_keys(value, EVAL_KEYS, "eval")
    if len(value) != 1:
        raise SetupError("eval takes one of fraction, count or datasets")
    if "fraction" in value:
        fraction = value["fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise SetupError(f"eval.fraction must be between 0 and 1, not {fraction!r}")
        return {"fraction": fraction}
    if "count" in value:
        count = value["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SetupError(f"eval.count must be a whole number of records, not {count!r}")
        return {"count": count}
    entries = value["datasets"]
    if not isinstance(entries, list) or not entries:
        raise SetupError("eval.datasets must be a list of entries, as in datasets")
    normalized = [normalize_dataset(entry, f"eval.datasets[{i}]") for i, entry in enumerate(entries)]
    unique_names(normalized, "eval.datasets")
    return {"datasets": normalized}


# axolotl's train_on_eos: "turn" trains each trained turn's end (lossmask's default), "none" none of them.
AXOLOTL_EOS = {"turn": True, "none": False}


def axolotl_entry(values: dict[str, Any], where: str) -> dict[str, Any]:
    """An axolotl `datasets:` entry (`type: chat_template`, `field_messages`, `message_property_mappings`,
    `roles_to_train`, `train_on_eos`, `train_on_inputs`, `roles` as lists of the data's names) in lossmask's
    spelling; an entry without those keys is returned as it is. docs/coming-from.md has the table."""
    out = {k: v for k, v in values.items() if k not in AXOLOTL_KEYS}
    roles = out.get("roles")
    if isinstance(roles, dict) and any(isinstance(v, list) for v in roles.values()):
        # axolotl: lossmask role -> the data's names for it; lossmask: the data's name -> role
        out["roles"] = {name: role_ for role_, names in roles.items() for name in as_list(names)}
    if not set(values) & set(AXOLOTL_KEYS):
        return out
    kind = values.get("type", "chat_template")
    if kind != "chat_template":
        raise SetupError(
            f"{where}.type {kind!r}: lossmask reads axolotl's chat_template entries; for other types use format: "
            "(openai, sharegpt, alpaca, prompt_completion, text), see docs/coming-from.md"
        )
    mappings = values.get("message_property_mappings") or {}
    if not isinstance(mappings, dict):
        raise SetupError(f"{where}.message_property_mappings must map role/content to the data's keys")
    check_keys(mappings, ("role", "content"), f"{where}.message_property_mappings")
    role, content = mappings.get("role", "role"), mappings.get("content", "content")
    messages = values.get("field_messages", "messages")
    fields = dict(out.get("fields") or {})
    if (role, content) == ("from", "value"):  # ShareGPT's turns
        out.setdefault("format", "sharegpt")
        if messages != "conversations":
            fields["conversations"] = messages
    else:
        out.setdefault("format", "openai")
        for name, value in (("messages", messages), ("role", role), ("content", content)):
            if value != name:
                fields[name] = value
    if fields:
        out["fields"] = fields
    if "roles_to_train" in values:
        out["train_roles"] = values["roles_to_train"]
    if "train_on_eos" in values:
        eos = values["train_on_eos"]
        if eos not in AXOLOTL_EOS:
            raise SetupError(
                f"{where}.train_on_eos {eos!r}: lossmask trains the end of every trained turn (turn) or none "
                "(none); 'all' and 'last' have no equivalent (see docs/coming-from.md)"
            )
        out["train_end_of_turn"] = AXOLOTL_EOS[eos]
    if values.get("train_on_inputs"):
        out["mask"] = "all"
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def load_config_file(path: str) -> dict[str, Any]:
    """A YAML or TOML file holding the same options as the command line (underscores or dashes)."""
    location = Path(path)
    if not location.is_file():
        raise SetupError(f"config file {path!r} does not exist")
    text = location.read_text(encoding="utf-8")
    try:
        if location.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise SetupError(f"config file {path} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise SetupError(f"config file {path} must hold a mapping of option names to values")
    return data
