"""What the approval queue and the changes page show: the console's board, an eventsourcing
projection of the ledger into a view whose position commits with its rows (projections/tracking.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from api.console.compensation import Reverted, reverted_by_run
from domain.approvals import APPROVAL_DECISION
from domain.origins import COMPENSATION, origin_of_entry
from domain.ports import LedgerStore
from projections.sqlview import SQLiteView, SQLView, Table, ViewTx
from projections.tracking import BATCH, LedgerBatch, ReadModel
from tachograph.contract.canonical import loads


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


APPROVALS = Table(
    "board_approvals",
    (("workspace", "text"), ("run_id", "text"), ("approval_id", "text"), ("summary", "text"),
     ("risk", "text"), ("change_id", "text"), ("requested", "text"), ("idx", "int"),
     ("decision", "text"), ("decided_by", "text"), ("reason", "text"), ("decided", "text"),
     ("decided_index", "int"), ("expires", "float")),
    key=("workspace", "run_id", "approval_id"),
    indexes=(("workspace", "decision", "idx"), ("workspace", "decided_index")),
)
CHANGES = Table(
    "board_changes",
    (("workspace", "text"), ("run_id", "text"), ("change_id", "text"), ("target", "text"),
     ("before_value", "json"), ("after_value", "json"), ("reversible", "bool"), ("proposed", "text"),
     ("idx", "int"), ("applied", "text"), ("applied_index", "int"), ("reverted", "text"),
     ("reverted_by", "text"), ("revert_reason", "text"), ("revert_run", "text"),
     ("compensates", "json")),
    key=("workspace", "run_id", "change_id"),
    indexes=(("workspace", "applied_index"),),
)
RUN_FACTS = Table(
    "board_runs",
    (("workspace", "text"), ("run_id", "text"), ("workflow", "text"), ("budget", "json"),
     ("breaches", "int"), ("completed", "bool"), ("reverts", "json"), ("replay_of", "text")),
    key=("workspace", "run_id"),
    indexes=(("workspace", "breaches"),),
)
TABLES = (APPROVALS, CHANGES, RUN_FACTS)
TOPICS = ("run.started", "budget.exceeded", "run.completed", "approval.requested", "approval.decided",
          "change.proposed", "change.applied", "change.reverted", APPROVAL_DECISION)


def _approval(row: dict[str, Any]) -> ApprovalItem:
    return ApprovalItem(row["workspace"], row["run_id"], row["approval_id"], row["summary"], row["risk"],
                        row["change_id"], row["requested"], row["idx"], row["decision"], row["decided_by"],
                        row["reason"], row["decided"], row["decided_index"], row["expires"])


def _approval_row(a: ApprovalItem) -> dict[str, Any]:
    return {"workspace": a.workspace, "run_id": a.run_id, "approval_id": a.approval_id,
            "summary": a.summary, "risk": a.risk, "change_id": a.change_id, "requested": a.requested,
            "idx": a.index, "decision": a.decision, "decided_by": a.by, "reason": a.reason,
            "decided": a.decided, "decided_index": a.decided_index, "expires": a.expires}


def _change(row: dict[str, Any]) -> ChangeItem:
    comp = row["compensates"]
    return ChangeItem(row["workspace"], row["run_id"], row["change_id"], row["target"], row["before_value"],
                      row["after_value"], bool(row["reversible"]), row["proposed"], row["idx"], row["applied"],
                      row["applied_index"], row["reverted"], row["reverted_by"], row["revert_reason"],
                      row["revert_run"], (comp[0], comp[1]) if comp else None)


def _change_row(c: ChangeItem) -> dict[str, Any]:
    return {"workspace": c.workspace, "run_id": c.run_id, "change_id": c.change_id, "target": c.target,
            "before_value": c.before, "after_value": c.after, "reversible": c.reversible,
            "proposed": c.proposed, "idx": c.index, "applied": c.applied, "applied_index": c.applied_index,
            "reverted": c.reverted, "reverted_by": c.reverted_by, "revert_reason": c.revert_reason,
            "revert_run": c.revert_run, "compensates": list(c.compensates) if c.compensates else None}


def _facts(row: dict[str, Any]) -> RunFacts:
    rev = row["reverts"]
    return RunFacts(row["workflow"], dict(row["budget"] or {}), row["breaches"], bool(row["completed"]),
                    Reverted(rev["run_id"], rev["change_id"], rev["reason"]) if rev else None, row["replay_of"])


def _facts_row(ws: str, run: str, f: RunFacts) -> dict[str, Any]:
    rev = f.reverts
    return {"workspace": ws, "run_id": run, "workflow": f.workflow, "budget": f.budget,
            "breaches": f.breaches, "completed": f.completed, "replay_of": f.replay_of,
            "reverts": {"run_id": rev.run_id, "change_id": rev.change_id, "reason": rev.reason} if rev else None}


class _Fold:
    """One batch's fold over the board's rows (read through the batch's transaction)."""

    def __init__(self, tx: ViewTx) -> None:
        self.tx = tx
        self.approvals: dict[tuple[str, str, str], ApprovalItem | None] = {}
        self.changes: dict[tuple[str, str, str], ChangeItem | None] = {}
        self.runs: dict[tuple[str, str], RunFacts] = {}

    def approval(self, key: tuple[str, str, str]) -> ApprovalItem | None:
        if key not in self.approvals:
            row = self.tx.get(APPROVALS, key)
            self.approvals[key] = _approval(row) if row is not None else None
        return self.approvals[key]

    def change(self, key: tuple[str, str, str]) -> ChangeItem | None:
        if key not in self.changes:
            row = self.tx.get(CHANGES, key)
            self.changes[key] = _change(row) if row is not None else None
        return self.changes[key]

    def facts(self, key: tuple[str, str]) -> RunFacts:
        f = self.runs.get(key)
        if f is None:
            row = self.tx.get(RUN_FACTS, key)
            f = self.runs[key] = _facts(row) if row is not None else RunFacts()
        return f

    def write(self) -> None:
        for a in self.approvals.values():
            if a is not None:
                self.tx.put(APPROVALS, _approval_row(a))
        for c in self.changes.values():
            if c is not None:
                self.tx.put(CHANGES, _change_row(c))
        for (ws, run), f in self.runs.items():
            self.tx.put(RUN_FACTS, _facts_row(ws, run, f))

    def event(self, index: int, entry: dict[str, Any]) -> None:
        ev = entry["event"]
        ws, run, t, d = ev["workspace"], ev["run_id"], ev["type"], ev["data"]
        facts = self.facts((ws, run))
        if t == "run.started":
            compensation = origin_of_entry(entry).origin == COMPENSATION
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
            received = entry.get("received")
            if d.get("timeout_s") is not None and received:
                expires = datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp() + float(d["timeout_s"])
            self.approvals[(ws, run, d["approval_id"])] = ApprovalItem(
                ws, run, d["approval_id"], d["summary"], d["risk"], d.get("change_id"), ev["time"], index,
                expires=expires)
        elif t == "approval.decided":
            a = self.approval((ws, run, d["approval_id"]))
            if a is not None and a.decision is None:
                a.decision, a.by, a.reason = d["decision"], d["by"], d.get("reason")
                a.decided, a.decided_index = ev["time"], index
        elif t == "change.proposed":
            self.changes[(ws, run, d["change_id"])] = ChangeItem(
                ws, run, d["change_id"], d["target"], d["before"], d["after"], d["reversible"],
                ev["time"], index,
                compensates=(facts.reverts.run_id, facts.reverts.change_id) if facts.reverts else None)
        elif t == "change.applied":
            c = self.change((ws, run, d["change_id"]))
            if c is not None:
                c.applied, c.applied_index = ev["time"], index
        elif t == "change.reverted":
            c = self.change((ws, run, d["change_id"]))
            if c is not None:
                c.reverted, c.reverted_by, c.revert_reason = ev["time"], d["by"], d.get("reason")

    def record(self, index: int, record: dict[str, Any]) -> None:
        d = record["data"]
        run_id, approval_id = d.get("run_id"), d.get("approval_id")
        if not isinstance(run_id, str) or not isinstance(approval_id, str):
            return
        a = self.approval((record["workspace"], run_id, approval_id))
        if a is not None and a.decision is None:
            a.decision, a.by, a.reason = d.get("decision"), d.get("by"), d.get("reason")
            a.decided, a.decided_index = record["time"], index

    def _compensated(self, ws: str, reverts: Reverted, revert_run: str, when: str, by: Any) -> None:
        """Mark the change a compensating run reverted (in the same workspace)."""
        c = self.change((ws, reverts.run_id, reverts.change_id))
        if c is not None and not c.reverted:
            c.reverted, c.revert_reason, c.revert_run = when, reverts.reason, revert_run
            c.reverted_by = by if isinstance(by, str) else "(unknown)"


class BoardProjection(Projection[SQLView]):
    """Folds approvals, changes and per-run facts; a person's decision is an ``approval.decision``
    record (the run's own ``approval.decided`` repeats it; in a ledger of agent-made decisions
    that event is the decision)."""

    name = "console_board"
    topics = TOPICS

    def process_event(self, domain_event: LedgerBatch, tracking: Tracking) -> None:
        """Fold one batch and record its tracking, in one transaction."""
        with self.view.batch(domain_event.start, tracking) as tx:
            rows = [r for r in domain_event.rows if r.index >= tx.position]
            if tx.done or not rows:
                return
            decoded = [(r.index, r.kind, loads(r.data)) for r in rows]
            runs = {(e["event"]["workspace"], e["event"]["run_id"]) for _, kind, e in decoded if kind == "event"}
            runs |= {(e["record"]["workspace"], e["record"]["data"].get("run_id")) for _, kind, e in decoded
                     if kind == "record" and isinstance(e["record"]["data"].get("run_id"), str)}
            for table in TABLES:  # everything of the runs the batch names, in one read per table
                tx.prefetch(table, ("workspace", "run_id"), runs)
            fold = _Fold(tx)
            for index, kind, e in decoded:
                if kind == "event":
                    fold.event(index, e)
                else:
                    fold.record(index, e["record"])
            fold.write()


class Board(ReadModel[SQLView]):
    """Approvals, changes and per-run facts by (workspace, run), read once the view has caught up
    with the ledger (a view in memory when none is given)."""

    def __init__(self, store: LedgerStore, view: SQLView | None = None, *, wait_s: float = 10.0,
                 batch_size: int = BATCH) -> None:
        if view is None:
            view = SQLiteView(BoardProjection.name, TABLES, None)
        super().__init__(store, BoardProjection(view), wait_s=wait_s, batch_size=batch_size)

    def _approvals(self, where: str, params: tuple[Any, ...]) -> list[ApprovalItem]:
        return [_approval(r) for r in self.view.query(f"SELECT * FROM {APPROVALS.name} WHERE {where}",
                                                      params, APPROVALS)]

    def facts(self, workspace: str, run_id: str) -> RunFacts:
        """The per-run facts (empty when the run is unknown)."""
        self.ready()
        rows = self.view.query(f"SELECT * FROM {RUN_FACTS.name} WHERE workspace = ? AND run_id = ?",
                               (workspace, run_id), RUN_FACTS)
        return _facts(rows[0]) if rows else RunFacts()

    def breaches(self, workspace: str) -> dict[str, int]:
        """Budget breaches by run, of the workspace's runs that had any."""
        self.ready()
        rows = self.view.query(f"SELECT run_id, breaches FROM {RUN_FACTS.name} WHERE workspace = ? "
                               "AND breaches > 0", (workspace,))
        return {r["run_id"]: int(r["breaches"]) for r in rows}

    def workflows(self, workspace: str, run_ids: Sequence[str]) -> dict[str, str | None]:
        """The workflow of each of the given runs that is known."""
        self.ready()
        out: dict[str, str | None] = {}
        for i in range(0, len(run_ids), 400):
            chunk = list(run_ids[i:i + 400])
            rows = self.view.query(f"SELECT run_id, workflow FROM {RUN_FACTS.name} WHERE workspace = ? "
                                   f"AND run_id IN ({', '.join('?' for _ in chunk)})", (workspace, *chunk))
            out.update({r["run_id"]: r["workflow"] for r in rows})
        return out

    def pending(self, workspace: str, now: float) -> list[ApprovalItem]:
        """Undecided approvals of runs still open and not timed out at ``now``, oldest first."""
        self.ready()
        sql = (f"SELECT a.* FROM {APPROVALS.name} a JOIN {RUN_FACTS.name} r ON r.workspace = a.workspace "
               "AND r.run_id = a.run_id WHERE a.workspace = ? AND a.decision IS NULL AND r.completed = ? "
               "AND (a.expires IS NULL OR a.expires > ?) ORDER BY a.idx")
        return [_approval(r) for r in self.view.query(sql, (workspace, False, now), APPROVALS)]

    def decided(self, workspace: str, limit: int = 50) -> list[ApprovalItem]:
        """Decided approvals, newest decision first."""
        self.ready()
        return self._approvals("workspace = ? AND decision IS NOT NULL AND decision <> '' "
                               "ORDER BY decided_index DESC LIMIT ?", (workspace, limit))

    def approval(self, workspace: str, run_id: str, approval_id: str) -> ApprovalItem | None:
        """One approval request of one run, if it exists."""
        self.ready()
        found = self._approvals("workspace = ? AND run_id = ? AND approval_id = ?",
                                (workspace, run_id, approval_id))
        return found[0] if found else None

    def change(self, workspace: str, run_id: str, change_id: str) -> ChangeItem | None:
        """One change, if it exists."""
        self.ready()
        rows = self.view.query(f"SELECT * FROM {CHANGES.name} WHERE workspace = ? AND run_id = ? "
                               "AND change_id = ?", (workspace, run_id, change_id), CHANGES)
        return _change(rows[0]) if rows else None

    def applied(self, workspace: str, limit: int = 200) -> list[ChangeItem]:
        """Applied changes, newest first."""
        self.ready()
        rows = self.view.query(f"SELECT * FROM {CHANGES.name} WHERE workspace = ? AND applied IS NOT NULL "
                               "ORDER BY applied_index DESC LIMIT ?", (workspace, limit), CHANGES)
        return [_change(r) for r in rows]


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
