"""Inline SVG charts for the HTML report: drawn here from numbers, so the report needs no script or network.

Two shapes cover the statistics: a histogram (vertical bars over bins) and horizontal bars per category with
a counted part and an uncounted part. Each bar has a <title>, which browsers show on hover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 520, 230
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 14, 40


def _axis(maximum: int) -> tuple[int, int]:
    """(top, step) of a count axis: a round step (1, 2 or 5 x 10^k) giving at most 4 intervals up to the top."""
    raw = max(maximum, 1) / 4
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(int(m * power) for m in (1, 2, 5, 10) if m * power >= raw)
    return step * math.ceil(max(maximum, 1) / step), step


def _fmt(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def histogram(counts: list[int], edges: list[float], color: str, x_label: str, percent_edges: bool = False) -> str:
    """Vertical bars, one per bin; x ticks at a few bin edges, y ticks at quarters of a round maximum."""
    if not counts:
        return '<p class="empty">no rows</p>'
    top, tick = _axis(max(counts))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / len(counts)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(x_label)}">']
    for value in range(0, top + 1, tick):
        y = TOP + plot_h - plot_h * value / top
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(value)}</text>')

    def edge_label(value: float) -> str:
        return f"{value:.0%}" if percent_edges else _fmt(value)

    for i, count in enumerate(counts):
        h = plot_h * count / top
        x = LEFT + i * step
        label = f"{edge_label(edges[i])} to {edge_label(edges[i + 1])}: {count:,} rows"
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{escape(label)}</title></rect>'
        )
    every = max(1, len(counts) // 6)
    for i in range(0, len(edges), every):
        x = LEFT + i * step
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
            f"{escape(edge_label(edges[i]))}</text>"
        )
    parts.append(
        f'<text class="axis" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class BarRow:
    label: str
    total: int
    counted: int  # the part drawn solid; total - counted is drawn light
    color: str
    tint: str


def bars(rows: list[BarRow], unit: str, counted_label: str = "counted") -> str:
    """Horizontal bars: one row per category, counted part solid, the rest tinted, value at the end."""
    if not rows:
        return '<p class="empty">none</p>'
    row_h, label_w = 24, 150
    values = [f"{row.total:,}" + (f"  ·  {row.counted:,} {counted_label}" if counted_label else "") for row in rows]
    # Room after the longest bar for the longest value (11px text: under 6.5px a character), never past the edge.
    value_w = max(130, int(6.5 * max(len(v) for v in values)) + 12)
    height = TOP + row_h * len(rows) + 6
    top = max(r.total for r in rows) or 1
    plot_w = WIDTH - label_w - value_w
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(unit)}">']
    for i, row in enumerate(rows):
        y = TOP + i * row_h
        w_total = plot_w * row.total / top
        w_counted = plot_w * row.counted / top
        share = f" ({row.counted / row.total:.0%} {counted_label})" if row.total and counted_label else ""
        title = escape(f"{row.label}: {row.total:,} {unit}" + share)
        label = row.label if len(row.label) <= 22 else row.label[:21] + "…"
        parts.append(
            f'<text class="label" x="{label_w - 8}" y="{y + 15}" text-anchor="end">'
            f"{escape(label)}<title>{title}</title></text>"
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{max(w_total, 1):.1f}" height="{row_h - 8}" rx="3" '
            f'fill="{row.tint}"><title>{title}</title></rect>'
        )
        if row.counted:
            parts.append(
                f'<rect x="{label_w}" y="{y + 3}" width="{max(w_counted, 1):.1f}" height="{row_h - 8}" rx="3" '
                f'fill="{row.color}"><title>{title}</title></rect>'
            )
        value = values[i]
        parts.append(f'<text class="value" x="{label_w + max(w_total, 1) + 6:.1f}" y="{y + 15}">{escape(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)
