"""Bar charts as inline SVG, drawn on the server: no JavaScript, nothing to load, readable on a phone.

Only numbers and escaped labels go into the markup, so a customer or intent name cannot inject
anything. Each bar carries a <title> with its exact value (a tooltip, and read by screen readers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999")
WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 12, 34
FONT = 13
TICKS = 5  # 1, 2, 2.5 and 5 times a power of ten all divide into five round steps


def nice_ceiling(value: float) -> float:
    """The round number at or above `value` that makes readable gridlines: 1, 2, 2.5 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def short(value: float) -> str:
    """Axis labels: 1200 -> '1.2k', 3500000 -> '3.5M'."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def bar_chart(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, title: str,
              stacked: bool = False, whole: bool = False, fmt: Callable[[float], str] = short) -> Markup:
    """Bars per category, one per series side by side (or stacked), with gridlines and a legend.

    `series` is (name, one value per category); `whole` for counts (no gridline at 0.4 of a reply);
    `fmt` writes the exact values in the tooltips.
    """
    if not categories or not series or not any(v for _, values in series for v in values):
        return Markup('<p class="empty">No data yet.</p>')
    totals = [sum(values[i] for _, values in series) if stacked else max(values[i] for _, values in series)
              for i in range(len(categories))]
    top = max(nice_ceiling(max(totals)), TICKS if whole else 0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(categories)
    group_w = min(slot * 0.7, 90.0)  # a lone week is a bar, not a wall
    bar_w = group_w / (1 if stacked else len(series))

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * value / top

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>"]
    for i in range(TICKS + 1):
        value = top * i / TICKS
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     f'stroke="#ddd" stroke-width="1"/>'
                     f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="{FONT}" '
                     f'fill="#555">{escape(short(value))}</text>')
    for i, category in enumerate(categories):
        x0 = LEFT + slot * (i + 0.5) - group_w / 2
        base = 0.0
        for k, (name, values) in enumerate(series):
            value = values[i]
            if value <= 0:
                continue
            x = x0 if stacked else x0 + bar_w * k
            low, high = (base, base + value) if stacked else (0.0, value)
            parts.append(f'<rect x="{x:.1f}" y="{y(high):.1f}" width="{max(bar_w - 1, 1):.1f}" '
                         f'height="{max(y(low) - y(high), 0.5):.1f}" fill="{PALETTE[k % len(PALETTE)]}">'
                         f"<title>{escape(category)} · {escape(name)}: {escape(fmt(value))}</title></rect>")
            base = high if stacked else base
        parts.append(f'<text x="{LEFT + slot * (i + 0.5):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle" '
                     f'font-size="{FONT}" fill="#333">{escape(category)}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#888"/>')
    parts.append("</svg>")
    legend = "".join(f'<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><rect width="10" height="10" '
                     f'fill="{PALETTE[k % len(PALETTE)]}"/></svg>{escape(name)}</li>'
                     for k, (name, _) in enumerate(series))
    return Markup(f'<figure class="chart">{"".join(parts)}<ul class="legend">{legend}</ul></figure>')
