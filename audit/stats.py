"""Dataset statistics from polars lazy scans over the rows: a handful of aggregate queries, no Python loops.

On a million rows this reads only the columns each query needs (`num_tokens`, `num_loss_tokens`, `flags`,
and for tokens per class `token_class` + `loss_mask` exploded in the streaming engine), so it is bounded
by decompression, not by Python.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from ..schemas.shards import RowFlag
from .palette import ROLES, style

LENGTH_BINS = 24  # at most, with a round bin width
FRACTION_BINS = 20  # counted-token fraction per row, in steps of 0.05


@dataclass
class Histogram:
    edges: list[float]  # bin i holds values in [edges[i], edges[i+1])
    counts: list[int]


@dataclass
class ClassCount:
    cls: int
    label: str
    role: str
    positions: int  # targets of this class
    counted: int  # of which count toward the loss


@dataclass
class RoleCount:
    role: str
    positions: int
    counted: int


@dataclass
class DatasetStats:
    rows: int = 0
    positions: int = 0
    counted: int = 0
    length: dict[str, float] = field(default_factory=dict)  # min, mean, p50, p90, p99, max positions per row
    length_histogram: Histogram = field(default_factory=lambda: Histogram([], []))
    fraction_histogram: Histogram = field(default_factory=lambda: Histogram([], []))
    classes: list[ClassCount] = field(default_factory=list)
    roles: list[RoleCount] = field(default_factory=list)
    row_flags: dict[str, int] = field(default_factory=dict)

    @property
    def counted_fraction(self) -> float:
        return self.counted / self.positions if self.positions else 0.0

    def by_role(self) -> list[tuple[RoleCount, list[ClassCount]]]:
        """Each role with the classes the reports list under it, so that reasoning, tool calls, tool output and
        the stop sequence get their own lines beside the role's total. A role whose one class is the role itself
        (system, user, text) lists none: the line would only repeat the role's."""
        out = []
        for role in self.roles:
            members = [c for c in self.classes if c.role == role.role]
            if len(members) == 1 and members[0].label == role.role:
                members = []
            out.append((role, members))
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counted_fraction"] = round(self.counted_fraction, 6)
        return out


def nice_width(maximum: int, bins: int = LENGTH_BINS) -> int:
    """The smallest width of the form 1, 2 or 5 x 10^k that covers [0, maximum] in at most `bins` bins."""
    raw = max(1.0, (maximum + 1) / bins)
    power = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if step * power >= raw:
            return int(step * power)
    return int(10 * power)  # pragma: no cover - the loop always returns


def compute_stats(frame: pl.LazyFrame) -> DatasetStats:
    tokens = pl.col("num_tokens").cast(pl.Int64)
    counted = pl.col("num_loss_tokens").cast(pl.Int64)
    flag_columns = [((pl.col("flags") & int(flag)) != 0).sum().alias(flag.name.lower()) for flag in RowFlag]
    totals = frame.select(
        pl.len().alias("rows"),
        tokens.sum().alias("positions"),
        counted.sum().alias("counted"),
        tokens.min().alias("min"),
        tokens.mean().alias("mean"),
        tokens.quantile(0.5, "nearest").alias("p50"),
        tokens.quantile(0.9, "nearest").alias("p90"),
        tokens.quantile(0.99, "nearest").alias("p99"),
        tokens.max().alias("max"),
        *flag_columns,
    ).collect()
    row = totals.row(0, named=True)
    stats = DatasetStats(rows=int(row["rows"]))
    if not stats.rows:
        return stats
    stats.positions = int(row["positions"])
    stats.counted = int(row["counted"])
    stats.length = {k: (round(float(row[k]), 2) if k == "mean" else int(row[k])) for k in ("min", "mean", "p50")}
    stats.length |= {k: int(row[k]) for k in ("p90", "p99", "max")}
    stats.row_flags = {flag.name.lower(): int(row[flag.name.lower()]) for flag in RowFlag if row[flag.name.lower()]}

    width = nice_width(int(row["max"]))
    fraction_bin = (counted * FRACTION_BINS // pl.when(tokens > 0).then(tokens).otherwise(1)).clip(0, FRACTION_BINS - 1)
    lengths, fractions, classes = pl.collect_all(
        [
            frame.select((tokens // width).alias("bin")).group_by("bin").agg(pl.len().alias("n")),
            frame.select(fraction_bin.alias("bin")).group_by("bin").agg(pl.len().alias("n")),
            frame.select(pl.col("token_class"), pl.col("loss_mask"))
            .explode("token_class", "loss_mask")
            .group_by("token_class")
            .agg(pl.len().alias("positions"), pl.col("loss_mask").cast(pl.Int64).sum().alias("counted")),
        ],
        engine="streaming",
    )
    n_bins = int(row["max"]) // width + 1
    stats.length_histogram = Histogram(
        edges=[float(i * width) for i in range(n_bins + 1)], counts=_dense(lengths, n_bins)
    )
    stats.fraction_histogram = Histogram(
        edges=[i / FRACTION_BINS for i in range(FRACTION_BINS + 1)], counts=_dense(fractions, FRACTION_BINS)
    )
    for cls, positions, n_counted in sorted(classes.iter_rows()):
        if cls is None:
            continue
        s = style(int(cls))
        stats.classes.append(ClassCount(int(cls), s.label, s.role, int(positions), int(n_counted)))
    for role in ROLES:
        members = [c for c in stats.classes if c.role == role]
        if members:
            stats.roles.append(RoleCount(role, sum(c.positions for c in members), sum(c.counted for c in members)))
    return stats


def _dense(frame: pl.DataFrame, n_bins: int) -> list[int]:
    counts = [0] * n_bins
    for bin_, n in frame.iter_rows():
        counts[min(int(bin_), n_bins - 1)] += int(n)
    return counts
