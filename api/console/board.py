"""What the approval queue and the changes page show, folded incrementally from the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from api.console.compensation import Reverted, reverted_by_run
from api.ledger_fold import LedgerFold
from domain.approvals import APPROVAL_DECISION
from domain.origins import COMPENSATION, origin_of_entry
from domain.ports import LedgerStore


@dataclass
class ApprovalItem:
    """One ``approval.requested`` and, once made, its decision."""

    workspace: str
    run_id: str
    approval_id: str
    summary: str
    risk: str
    change_id: str | None
    requested: str
    index: int
    decision: str | None = None
    by: str | None = None
    reason: str | None = None
    decided: str | None = None
    decided_index: int | None = None
    expires: float | None = None  # unix time: received + timeout_s

    def expired(self, now: float) -> bool:
        """Undecided past its timeout."""
        return self.decision is None and self.expires is not None and now >= self.expires


@dataclass
class ChangeItem:
    """One proposed change of a run, and whether it was applied or reverted."""

    workspace: str
    run_id: str
    change_id: str
    target: str
    before: dict[str, Any]
    after: dict[str, Any]
    reversible: bool
    proposed: str
    index: int
    applied: str | None = None
    applied_index: int | None = None
    reverted: str | None = None
    reverted_by: str | None = None
    revert_reason: str | None = None
    revert_run: str | None = None  # the compensating run that reverted it (the console's reverts)
    compensates: tuple[str, str] | None = None  # (run, change) this compensating change reverts


@dataclass
class RunFacts:
    """Per-run facts the runs list needs beyond the API's run summary."""

    workflow: str | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    breaches: int = 0
    completed: bool = False
    reverts: Reverted | None = None  # set on a compensating run written by the console
    replay_of: str | None = None  # set on a replay: its approval requests ask no person


class Board(LedgerFold):
    """Approvals, changes and per-run facts by (workspace, run), refreshed from unseen entries.

    A person's decision is an ``approval.decision`` record (the run's own ``approval.decided``
    repeats it; in a ledger of agent-made decisions that event is the decision).
    """

    record_types = frozenset({APPROVAL_DECISION})

    def __init__(self, store: LedgerStore) -> None:
        super().__init__(store)
        self.approvals: dict[tuple[str, str, str], ApprovalItem] = {}
        self.changes: dict[tuple[str, str, str], ChangeItem] = {}
        self.runs: dict[tuple[str, str], RunFacts] = {}

    def fold(self, index: int, entry: dict[str, Any]) -> None:
        ev = entry["event"]
        compensation = ev["type"] == "run.started" and origin_of_entry(entry).origin == COMPENSATION
        self._apply(index, ev, compensation, entry.get("received"))

    def fold_record(self, index: int, record: dict[str, Any]) -> None:
        d = record["data"]
        a = self.approvals.get((record["workspace"], d.get("run_id"), d.get("approval_id")))
        if a is not None and a.decision is None:
            a.decision, a.by, a.reason = d.get("decision"), d.get("by"), d.get("reason")
            a.decided, a.decided_index = record["time"], index

    def _apply(self, index: int, ev: dict[str, Any], compensation: bool, received: str | None = None) -> None:
        ws, run, t, d = ev["workspace"], ev["run_id"], ev["type"], ev["data"]
        facts = self.runs.setdefault((ws, run), RunFacts())
        if t == "run.started":
            facts.workflow, facts.budget = d["workflow"], dict(d.get("budget") or {})
            facts.replay_of = d.get("replay_of")
            # only the platform writes compensating runs (domain/origins.py): labels from
            # elsewhere are not trusted
            facts.reverts = reverted_by_run(ev) if compensation else None
        elif t == "budget.exceeded":
            facts.breaches += 1
        elif t == "run.completed":
            facts.completed = True
            if facts.reverts is not None and d["outcome"] == "succeeded":
                self._compensated(ws, facts.reverts, run, ev["time"], (d.get("result") or {}).get("by"))
        elif t == "approval.requested" and facts.replay_of is None:  # a replay asks no person
            expires = None
            if d.get("timeout_s") is not None and received:
                expires = datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp() + float(d["timeout_s"])
            self.approvals[(ws, run, d["approval_id"])] = ApprovalItem(
                ws, run, d["approval_id"], d["summary"], d["risk"], d.get("change_id"), ev["time"], index,
                expires=expires)
        elif t == "approval.decided":
            a = self.approvals.get((ws, run, d["approval_id"]))
            if a is not None and a.decision is None:
                a.decision, a.by, a.reason = d["decision"], d["by"], d.get("reason")
                a.decided, a.decided_index = ev["time"], index
        elif t == "change.proposed":
            self.changes[(ws, run, d["change_id"])] = ChangeItem(
                ws, run, d["change_id"], d["target"], d["before"], d["after"], d["reversible"],
                ev["time"], index,
                compensates=(facts.reverts.run_id, facts.reverts.change_id) if facts.reverts else None)
        elif t == "change.applied":
            c = self.changes.get((ws, run, d["change_id"]))
            if c is not None:
                c.applied, c.applied_index = ev["time"], index
        elif t == "change.reverted":
            c = self.changes.get((ws, run, d["change_id"]))
            if c is not None:
                c.reverted, c.reverted_by, c.revert_reason = ev["time"], d["by"], d.get("reason")

    def _compensated(self, ws: str, reverts: Reverted, revert_run: str, when: str, by: Any) -> None:
        """Mark the change a compensating run reverted (in the same workspace)."""
        c = self.changes.get((ws, reverts.run_id, reverts.change_id))
        if c is not None and not c.reverted:
            c.reverted, c.revert_reason, c.revert_run = when, reverts.reason, revert_run
            c.reverted_by = by if isinstance(by, str) else "(unknown)"

    def facts(self, workspace: str, run_id: str) -> RunFacts:
        """The per-run facts (empty when the run is unknown)."""
        self.refresh()
        return self.runs.get((workspace, run_id), RunFacts())

    def pending(self, workspace: str, now: float) -> list[ApprovalItem]:
        """Undecided approvals of runs still open and not timed out at ``now``, oldest first."""
        self.refresh()
        return sorted((a for a in self.approvals.values() if a.workspace == workspace
                       and a.decision is None and not a.expired(now)
                       and not self.runs[(a.workspace, a.run_id)].completed),
                      key=lambda a: a.index)

    def decided(self, workspace: str, limit: int = 50) -> list[ApprovalItem]:
        """Decided approvals, newest decision first."""
        self.refresh()
        done = [a for a in self.approvals.values() if a.workspace == workspace and a.decision]
        return sorted(done, key=lambda a: -(a.decided_index or 0))[:limit]

    def approval(self, workspace: str, run_id: str, approval_id: str) -> ApprovalItem | None:
        """One approval request of one run, if it exists."""
        self.refresh()
        return self.approvals.get((workspace, run_id, approval_id))

    def change(self, workspace: str, run_id: str, change_id: str) -> ChangeItem | None:
        """One change, if it exists."""
        self.refresh()
        return self.changes.get((workspace, run_id, change_id))

    def applied(self, workspace: str, limit: int = 200) -> list[ChangeItem]:
        """Applied changes, newest first."""
        self.refresh()
        done = [c for c in self.changes.values() if c.workspace == workspace and c.applied]
        return sorted(done, key=lambda c: -(c.applied_index or 0))[:limit]


def diff_rows(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """A compact before/after diff: (field path, before, after, changed), nested keys flattened."""
    def flat(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
        if isinstance(value, dict) and value:
            for k in value:
                flat(value[k], f"{prefix}.{k}" if prefix else str(k), out)
        else:
            out[prefix or "(value)"] = value
        return out

    b, a = flat(before, "", {}), flat(after, "", {})
    missing = object()
    rows = []
    for key in sorted(set(b) | set(a)):
        bv, av = b.get(key, missing), a.get(key, missing)
        rows.append((key, None if bv is missing else bv, None if av is missing else av, bv != av))
    rows.sort(key=lambda r: not r[3])
    return rows
