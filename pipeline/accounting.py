"""Nothing lost: every input record ends written, rejected or dropped, with a reason and its source.

read = written + rejected + dropped, always; `Accounting.check` asserts it before the manifest is written.
A record made into several rows (split turns) is written when at least one row is; its other rows' drops are
counted under `rows_dropped`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecordError
from ..schemas.reasons import DROP_REASONS, describe
from ..schemas.records import SourceRef
from ..schemas.shards import RowFlag


@dataclass(slots=True)
class Outcome:
    source: SourceRef
    status: str  # "written", "rejected" or "dropped"
    rows: int = 0
    reason: str | None = None
    detail: str = ""
    field: str | None = None
    # Written records only: the reason of each of their rows a policy dropped (e.g. one split turn too long).
    rows_dropped: tuple[str, ...] = ()
    dataset: int | None = None  # with `datasets:`, the entry the record came from
    digest: bytes | None = None  # with `dedup`, the digest of its normalized messages (`dedup.record_digest`)

    def __reduce__(self) -> tuple[Any, ...]:
        # Each record's outcome crosses from a worker to the main process: pickled by its fields (see SourceRef's).
        fields = (self.source, self.status, self.rows, self.reason, self.detail, self.field, self.rows_dropped)
        return (Outcome, (*fields, self.dataset, self.digest))

    @classmethod
    def failed(cls, source: SourceRef, error: RecordError) -> Outcome:
        status = "dropped" if error.reason in DROP_REASONS else "rejected"
        return cls(source, status, 0, error.reason, error.detail, error.field)

    def to_reject_line(self, dataset: str | None = None) -> str:
        line: dict[str, Any] = {
            **({"dataset": dataset} if dataset is not None else {}),
            "source": str(self.source),
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "hint": describe(self.reason or ""),
        }
        if self.field:
            line["field"] = self.field
        return json.dumps(line, ensure_ascii=False)


@dataclass
class Accounting:
    read: int = 0
    written: int = 0
    rejected: int = 0
    dropped: int = 0
    rows: int = 0
    by_reason: dict[str, Counter[str]] = field(default_factory=lambda: {"rejected": Counter(), "dropped": Counter()})
    rows_dropped: Counter[str] = field(default_factory=Counter)
    _flag_values: Counter[int] = field(default_factory=Counter)  # raw RowFlag ints; named only when reported

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Accounting:
        """Restore the counts a checkpoint saved (the inverse of `to_dict`)."""
        accounting = cls(
            read=data["read"],
            written=data["written"],
            rejected=data["rejected"],
            dropped=data["dropped"],
            rows=data["rows"],
        )
        for status, counts in data["by_reason"].items():
            accounting.by_reason[status].update(counts)
        accounting.rows_dropped.update(data["rows_dropped"])
        for name, count in data["row_flags"].items():
            accounting._flag_values[int(RowFlag[name.upper()])] += count
        return accounting

    def add(self, outcome: Outcome) -> None:
        self.read += 1
        if outcome.status == "written":
            self.written += 1
            self.rows += outcome.rows
            self.rows_dropped.update(outcome.rows_dropped)
            return
        if outcome.status == "rejected":
            self.rejected += 1
        else:
            self.dropped += 1
        self.by_reason[outcome.status][outcome.reason or "unknown"] += 1

    def merge(self, other: Accounting) -> None:
        """Add another part's counts (a work unit's: `jobs.units` sums them in unit order)."""
        self.read += other.read
        self.written += other.written
        self.rejected += other.rejected
        self.dropped += other.dropped
        self.rows += other.rows
        for status, counts in other.by_reason.items():
            self.by_reason[status].update(counts)
        self.rows_dropped.update(other.rows_dropped)
        self._flag_values.update(other._flag_values)

    def add_row_flags(self, flags: int) -> None:
        if flags:
            self._flag_values[flags] += 1

    @property
    def row_flags(self) -> Counter[str]:
        """Rows per flag name (a row with several flags counts under each)."""
        named: Counter[str] = Counter()
        for value, count in self._flag_values.items():
            for flag in RowFlag:
                if value & flag:
                    named[flag.name.lower()] += count
        return named

    def check(self) -> None:
        if self.read != self.written + self.rejected + self.dropped:  # pragma: no cover - a bug if it fires
            raise AssertionError(f"accounting does not add up: {self.to_dict()}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "written": self.written,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "rows": self.rows,
            "by_reason": {status: dict(sorted(counts.items())) for status, counts in self.by_reason.items()},
            "rows_dropped": dict(sorted(self.rows_dropped.items())),
            "row_flags": dict(sorted(self.row_flags.items())),
        }
