"""The job's configuration: one dataclass, loadable from YAML or TOML, overridden by command-line flags.

The resolved configuration is written into the manifest, so every shard set says how it was made.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import SetupError
from ..schemas.shards import LAYOUT_PACKED, LAYOUT_ROWS
from .encoders import ENCODER_NAMES
from .fit import OVERFLOW_POLICIES, TRUNCATE_SIDES, LengthPolicy
from .formats import FORMAT_NAMES, PREFERENCE_LAYOUTS
from .formats.options import MAX_MESSAGE_CHARS, MAX_RECORD_BYTES, FormatOptions
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
}


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
    # Limits on one record, so that no input costs more than bounded memory and time (docs/prepare.md, "Limits"):
    # reading skips a longer record (record_too_large), parsing rejects a longer message (message_too_long), and
    # each rendering has a time and a size budget (template_timeout, template_output_too_large).
    max_record_bytes: int = MAX_RECORD_BYTES
    max_message_chars: int = MAX_MESSAGE_CHARS
    template_timeout: float = DEFAULT_TIMEOUT  # seconds
    template_max_chars: int = DEFAULT_MAX_CHARS

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> PrepareConfig:
        known = {f.name for f in fields(cls)}
        values = {key.replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SetupError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**values)

    def __post_init__(self) -> None:
        """Normalize what config files and flags may spell loosely, then check the whole: every config is valid."""
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if isinstance(self.train_roles, str):
            self.train_roles = [r.strip() for r in self.train_roles.split(",") if r.strip()]
        if self.pack is not None and self.max_length is None:
            self.max_length = self.pack  # a document longer than a row goes through --overflow first
        self.validate()

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
        if self.batch_size < 1 or self.shard_max_rows < 1 or self.shard_max_bytes < 1:
            raise SetupError("batch_size, shard_max_rows and shard_max_bytes must be positive")
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
        if not self.inputs:
            raise SetupError("no input given: pass INPUT files or globs, or `inputs:` in the config")
        if not self.tokenizer:
            raise SetupError("no tokenizer given: pass --tokenizer PATH (a tokenizer.json or a model folder)")
        if not self.out:
            raise SetupError("no output folder given: pass --out DIR")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_options(self) -> FormatOptions:
        return FormatOptions(
            fields=dict(self.fields),
            roles=dict(self.roles),
            alpaca_join=self.alpaca_join,
            max_record_bytes=int(self.max_record_bytes),
            max_message_chars=int(self.max_message_chars),
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
