"""The run timeline page's data: every step with its details, ledger position and budget usage."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from api.console.board import diff_rows
from domain.ports import EntryRow
from tachograph.contract.canonical import loads


@dataclass
class Step:
    """One event of the run as the timeline shows it."""

    seq: int
    index: int
    time: str
    offset_ms: float | None
    type: str
    agent: str
    data: dict[str, Any]
    leaf_hash: str
    prev: str | None
    received: str
    diff: list[tuple[str, Any, Any, bool]] = field(default_factory=list)


@dataclass
class BudgetLine:
    """One budget cap against what the run used."""

    limit: str
    cap: Decimal
    used: Decimal

    @property
    def share(self) -> float:
        """Used over the cap (0 when the cap is 0)."""
        return float(self.used / self.cap) if self.cap else 0.0


@dataclass
class RunView:
    """Everything the run page shows."""

    steps: list[Step]
    budget: list[BudgetLine]
    workflow: str | None
    outcome: str | None
    open_approvals: list[str]
    first_index: int
    last_index: int


def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        return None


def run_view(rows: list[EntryRow]) -> RunView:
    """Build the timeline of one run from its stored entries (in seq order)."""
    steps: list[Step] = []
    proposed: dict[str, dict[str, Any]] = {}
    caps: dict[str, Any] = {}
    calls = tokens = 0
    cost = Decimal(0)
    start: datetime | None = None
    last: datetime | None = None
    workflow = outcome = None
    approvals: dict[str, bool] = {}
    for r in rows:
        entry = loads(r.data)
        ev = entry["event"]
        t, d = ev["type"], ev["data"]
        when = _when(ev["time"])
        if start is None:
            start = when
        last = when or last
        offset = round((when - start).total_seconds() * 1000, 3) if when and start else None
        step = Step(ev["seq"], r.index, ev["time"], offset, t, f"{ev['agent']['id']} {ev['agent']['version']}",
                    d, r.leaf_hash.hex(), entry.get("prev"), entry["received"])
        if t == "run.started":
            workflow, caps = d["workflow"], dict(d.get("budget") or {})
        elif t == "model.called":
            calls += 1
            tokens += int(d["input_tokens"]) + int(d["output_tokens"])
            cost += Decimal(str(d["cost_usd"]))
        elif t == "change.proposed":
            proposed[d["change_id"]] = d
            step.diff = diff_rows(d["before"], d["after"])
        elif t == "approval.requested":
            approvals[d["approval_id"]] = False
        elif t == "approval.decided":
            approvals[d["approval_id"]] = True
        elif t == "run.completed":
            outcome = d["outcome"]
        steps.append(step)
    elapsed = Decimal(str((last - start).total_seconds())) if last and start else Decimal(0)
    used = {"max_model_calls": Decimal(calls), "max_tokens": Decimal(tokens),
            "max_cost_usd": cost, "deadline_s": elapsed}
    budget = [BudgetLine(name.removeprefix("max_"), Decimal(str(caps[name])), used[name])
              for name in ("max_model_calls", "max_tokens", "max_cost_usd", "deadline_s") if name in caps]
    open_approvals = [a for a, done in approvals.items() if not done] if outcome is None else []
    return RunView(steps, budget, workflow, outcome, open_approvals,
                   rows[0].index if rows else 0, rows[-1].index if rows else 0)


def revision_parts(revision: str, known: Collection[str]) -> list[tuple[str, str | None]]:
    """A decision's policy revision as (text, revision id to link or None) parts.

    ``revision`` is one bundle's revision, or ``name=revision`` pairs (comma-separated) when OPA
    had several bundles loaded. A part is linked only when its revision is one of ``known`` (the
    workspace's published revisions): OPA may report revisions of bundles served elsewhere.
    """
    if revision in known:
        return [(revision, revision)]
    if "=" not in revision:
        return [(revision, None)]
    parts: list[tuple[str, str | None]] = []
    for part in revision.split(","):
        rev = part.partition("=")[2]
        parts.append((part, rev if rev in known else None))
    return parts
