"""A PNG chart of cost per successful outcome over time, one line per workflow (matplotlib Agg)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from projections.reports import Report


def cost_chart(report: Report, path: Path) -> Path:
    """Draw a cost-per-outcome report that has a ``day`` or ``week`` dimension into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    period = next((d for d in report.by if d in ("day", "week")), None)
    if period is None:
        from projections.errors import ReportError

        raise ReportError("a chart needs --by with day or week, e.g. --by workflow,week")
    series_dims = [d for d in report.by if d != period]
    lines: dict[str, list[tuple[Any, float]]] = defaultdict(list)
    for rec in report.records():
        value = rec["cost_per_outcome_usd"]
        if value is None:
            continue
        label = " / ".join(str(rec[d]) for d in series_dims) or "all"
        lines[label].append((rec[period], float(value)))
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    for label, points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_title(f"Cost per successful outcome by {period}")
    ax.set_ylabel("USD per successful outcome")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
