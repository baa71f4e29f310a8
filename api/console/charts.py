"""Small server-made SVG charts (line and horizontal bar) for the console; no JavaScript."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from html import escape

from markupsafe import Markup

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f")
Number = int | float | Decimal


def _fmt(value: float, unit: str) -> str:
    if unit == "$":
        if value == 0:
            return "$0"
        return f"${value:.4f}" if abs(value) < 1 else f"${value:,.2f}"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.3g}{unit}"


def _nice_max(value: float) -> float:
    """The smallest 1/2/2.5/5 × 10^k at or above ``value`` (a round axis maximum)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude * (1 + 1e-9):
            return step * magnitude
    return value


def empty_chart(title: str, message: str = "no data yet") -> Markup:
    """A placeholder of chart size saying there is nothing to draw."""
    return Markup(
        f'<svg class="chart" viewBox="0 0 640 120" role="img" aria-label="{escape(title)}">'
        f'<text x="12" y="22" class="chart-title">{escape(title)}</text>'
        f'<text x="320" y="70" text-anchor="middle" class="chart-muted">{escape(message)}</text></svg>'
    )


def line_chart(title: str, series: Mapping[str, Sequence[tuple[str, Number | None]]],
               unit: str = "") -> Markup:
    """One line per series over shared ordered x labels (gaps where a value is None)."""
    xs = sorted({x for points in series.values() for x, _ in points})
    values = [float(v) for points in series.values() for _, v in points if v is not None]
    if not xs or not values:
        return empty_chart(title)
    width, height, left, right, top, bottom = 640, 260, 70, 160, 34, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    ymax = _nice_max(max(values))
    pos = {x: left + (plot_w * i / max(1, len(xs) - 1) if len(xs) > 1 else plot_w / 2) for i, x in enumerate(xs)}

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / ymax

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<text x="12" y="20" class="chart-title">{escape(title)}</text>']
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="chart-grid"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="chart-axis">'
                   f'{escape(_fmt(v, unit))}</text>')
    step = max(1, len(xs) // 6)
    for i, x in enumerate(xs):
        if i % step == 0 or i == len(xs) - 1:
            out.append(f'<text x="{pos[x]:.1f}" y="{top + plot_h + 18}" text-anchor="middle" '
                       f'class="chart-axis">{escape(x)}</text>')
    for n, (name, points) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        pts = [(pos[x], y(float(v))) for x, v in sorted(points) if v is not None]
        if len(pts) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for px, py in pts:
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>')
        ly = top + 14 + n * 18
        out.append(f'<rect x="{left + plot_w + 14}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{left + plot_w + 30}" y="{ly}" class="chart-legend">{escape(name[:22])}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(title: str, bars: Sequence[tuple[str, Number | None]], unit: str = "") -> Markup:
    """Horizontal bars, one per label, with the value written beside each."""
    rows = [(label, float(v)) for label, v in bars if v is not None]
    if not rows:
        return empty_chart(title)
    width, left, right, top, bar_h, gap = 640, 190, 90, 34, 18, 8
    height = top + len(rows) * (bar_h + gap) + 10
    vmax = max(v for _, v in rows) or 1.0
    plot_w = width - left - right
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<text x="12" y="20" class="chart-title">{escape(title)}</text>']
    for i, (label, v) in enumerate(rows):
        yy = top + i * (bar_h + gap)
        w = max(1.0, plot_w * v / vmax) if v > 0 else 0.0
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<text x="{left - 8}" y="{yy + 13}" text-anchor="end" class="chart-axis">'
                   f'{escape(label[:30])}</text>')
        out.append(f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="{bar_h}" fill="{color}" rx="2"/>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{yy + 13}" class="chart-value">{escape(_fmt(v, unit))}</text>')
    out.append("</svg>")
    return Markup("".join(out))
