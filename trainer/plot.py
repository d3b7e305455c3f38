"""The loss curve as a small standalone SVG: no plotting library needed, opens in any browser.

The curve is the per-step training loss (light), its exponential moving average (dark), and a dashed line at
log V, where a model that predicts uniformly would sit: the lesson's "terrible at first" level (for DPO, at log 2,
where the policy still equals its reference).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 40, 48


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def loss_curve_svg(
    steps: list[int],
    losses: list[float],
    reference: float | None = None,
    title: str = "",
    label: str = "log V (uniform)",
) -> str:
    """The SVG text: x = step, y = loss (0 at the bottom, so "fell by half" is visible at a glance)."""
    if not steps or len(steps) != len(losses):
        raise ValueError("need as many losses as steps, and at least one")
    top_value = max([*losses, reference or 0.0]) * 1.05 or 1.0
    x_lo, x_hi = steps[0], max(steps[-1], steps[0] + 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(step: float) -> float:
        return LEFT + (step - x_lo) / (x_hi - x_lo) * plot_w

    def y(loss: float) -> float:
        return TOP + (1 - loss / top_value) * plot_h

    def polyline(values: list[float], style: str, name: str) -> str:
        points = " ".join(f"{x(s):.2f},{y(v):.2f}" for s, v in zip(steps, values, strict=True))
        return f'<polyline class="{name}" points="{points}" fill="none" {style}/>'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for tick in nice_ticks(0.0, top_value):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.2f}" y2="{y(tick):.2f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(tick) + 4:.2f}" text-anchor="end">{tick:g}</text>')
    for tick in nice_ticks(x_lo, x_hi):
        parts.append(f'<text x="{x(tick):.2f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{tick:g}</text>')
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="black"/>'
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" stroke="black"/>'
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 10}" text-anchor="middle">step</text>'
        f'<text x="16" y="{HEIGHT / 2}" text-anchor="middle" transform="rotate(-90 16 {HEIGHT / 2})">loss</text>'
    )
    if reference is not None:
        parts.append(
            f'<line class="reference" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(reference):.2f}" '
            f'y2="{y(reference):.2f}" stroke="#c33" stroke-dasharray="6 4"/>'
            f'<text x="{WIDTH - RIGHT - 4}" y="{y(reference) - 6:.2f}" text-anchor="end" fill="#c33">'
            f"{label} = {reference:.3f}</text>"
        )
    parts.append(polyline(losses, 'stroke="#9ecae1" stroke-width="1"', "loss"))
    parts.append(polyline(smooth(losses), 'stroke="#08519c" stroke-width="2"', "smoothed"))
    parts.append(
        f'<text x="{WIDTH - RIGHT - 4}" y="{TOP + 14}" text-anchor="end">first {losses[0]:.3f}, '
        f"last {losses[-1]:.3f}, smoothed last {smooth(losses)[-1]:.3f}</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_loss_curve(path: Path, steps: list[int], losses: list[float], **options: Any) -> None:
    """`loss_curve_svg` into `path`; its `reference` is a dashed line named `label` (SFT: log V, DPO: log 2)."""
    path.write_text(loss_curve_svg(steps, losses, **options), encoding="utf-8")
