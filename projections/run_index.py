"""The run index: one row per run (its summary and state), projected from the ledger with its
position tracked in the same transaction (eventsourcing's ``Projection`` over a ``SQLView``).

The API lists and reads runs from it, the console's runs and kill-switch pages too, and replay
selects the runs it takes from it (``catalogue``) instead of scanning the ledger.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from domain.origins import (
    ALL,
    DECISION_LOG_SOURCE,
    PRODUCTION,
    OriginSelection,
    RunOrigin,
    run_origin,
)
from domain.ports import LedgerStore
from projections.sqlview import SQLiteView, SQLView, Table
from projections.tracking import BATCH, LedgerBatch, ReadModel

RUNS = Table(
    "run_index",
    (("workspace", "text"), ("run_id", "text"), ("first_index", "int"), ("started", "text"),
     ("workflow", "text"), ("mode", "text"), ("risk_tier", "text"), ("agent_id", "text"),
     ("agent_version", "text"), ("outcome", "text"), ("completed", "text"), ("last_index", "int"),
     ("events", "int"), ("model_calls", "int"), ("tool_calls", "int"), ("denials", "int"),
     ("tokens", "int"), ("cost_usd", "text"), ("unpriced_calls", "int"), ("origin", "text"),
     ("replay_id", "text"), ("decision_log", "bool"), ("source_kind", "text")),
    key=("workspace", "run_id"),
    indexes=(("workspace", "first_index"), ("first_index",)),
)


@dataclass
class RunSummary:
    """What the runs list shows about one run."""

    workspace: str
    run_id: str
    first_index: int
    started: str
    workflow: str | None = None
    mode: str | None = None
    risk_tier: str | None = None
    agent_id: str | None = None
    agent_version: str | None = None
    outcome: str | None = None
    completed: str | None = None
    last_index: int = 0
    events: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    denials: int = 0
    tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)  # of the priced model calls
    unpriced_calls: int = 0  # model calls recorded with no known price (priced: false)
    origin: RunOrigin = field(default_factory=lambda: RunOrigin(PRODUCTION))
    decision_log: bool = False
    """OPA's decision log (begun, and only ever written, by ``POST /v1/opa/logs``): no agent's
    run, never running; a run others appended to is counted as a run."""
    source_kind: str | None = None
    """Who wrote the run's ``run.started`` (its entry's source kind): what replay selects by."""

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON (money as an exact decimal string)."""
        return {
            "workspace": self.workspace,
            "run_id": self.run_id,
            "workflow": self.workflow,
            "mode": self.mode,
            "risk_tier": self.risk_tier,
            "agent": {"id": self.agent_id, "version": self.agent_version},
            "started": self.started,
            "completed": self.completed,
            "outcome": self.outcome,
            "events": self.events,
            "model_calls": self.model_calls,
            "tool_calls": self.tool_calls,
            "denials": self.denials,
            "tokens": self.tokens,
            "cost_usd": None if self.unpriced_calls else str(self.cost_usd),
            "priced_cost_usd": str(self.cost_usd),
            "unpriced_calls": self.unpriced_calls,
            "origin": self.origin.origin,
            "replay_id": self.origin.replay_id,
            "decision_log": self.decision_log,
            "first_index": self.first_index,
            "last_index": self.last_index,
        }

    def to_row(self) -> dict[str, Any]:
        """The summary as a row of ``RUNS``."""
        row = {c: getattr(self, c) for c in RUNS.names if hasattr(self, c)}
        row.update(cost_usd=str(self.cost_usd), origin=self.origin.origin, replay_id=self.origin.replay_id)
        return row

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> RunSummary:
        """A summary from a row of ``RUNS``."""
        values = dict(row)
        origin = RunOrigin(values.pop("origin"), values.pop("replay_id"),
                           decision_log=values.get("source_kind") == DECISION_LOG_SOURCE)
        values["cost_usd"] = Decimal(values["cost_usd"])
        return cls(**values, origin=origin)

    def apply(self, index: int, entry: Entry) -> None:
        """Fold one stored event entry of the run (its ``event`` member as published)."""
        ev = entry.event
        self.events += 1
        self.last_index = index
        data = ev.data
        etype = ev.type
        kind = entry.source.kind if entry.source is not None else None
        if etype == "run.started":
            self.workflow, self.mode, self.risk_tier = data.workflow, data.mode, data.risk_tier
            self.agent_id, self.agent_version = ev.agent.id, ev.agent.version
            self.started = ev.time
            self.origin = run_origin(kind, {"labels": data.labels})
            self.decision_log = self.origin.decision_log
            self.source_kind = kind
        elif self.decision_log and kind != DECISION_LOG_SOURCE:
            self.decision_log = False  # someone else wrote into it: a run like any other
        if etype == "model.called":
            self.model_calls += 1
            self.tokens += int(data.input_tokens) + int(data.output_tokens)
            if data.priced is False:  # unknown, not free
                self.unpriced_calls += 1
            else:
                self.cost_usd += data.cost_usd or Decimal(0)
        elif etype == "tool.called":
            self.tool_calls += 1
        elif etype == "policy.evaluated" and data.decision == "deny":
            self.denials += 1
        elif etype == "run.completed":
            self.outcome, self.completed = data.outcome, ev.time


class _Agent(msgspec.Struct):
    id: Any = None
    version: Any = None


class _Data(msgspec.Struct):
    """The ``data`` members the index folds (all others are skipped unread)."""

    workflow: Any = None
    mode: Any = None
    risk_tier: Any = None
    labels: Any = None
    input_tokens: Any = 0
    output_tokens: Any = 0
    cost_usd: Decimal | None = None  # exact: JSON numbers and decimal strings alike
    priced: Any = None
    decision: Any = None
    outcome: Any = None


class _Event(msgspec.Struct):
    workspace: str
    run_id: str
    type: str
    time: str
    agent: _Agent
    data: _Data


class _Source(msgspec.Struct):
    kind: Any = None


class Entry(msgspec.Struct):
    """What the run index reads of a stored event entry (decoding the rest would be most of its
    time: model requests and responses)."""

    event: _Event
    source: _Source | None = None


_decode_entry = msgspec.json.Decoder(Entry).decode


@dataclass(frozen=True)
class RunFilter:
    """Filters of the runs list (all optional except the workspace)."""

    workspace: str
    workflow: str | None = None
    agent: str | None = None
    outcome: str | None = None
    since: str | None = None
    until: str | None = None
    has_denial: bool | None = None
    origin: str | None = None  # None or ``all``: runs of every origin
    replay_id: str | None = None
    decision_log: bool | None = None  # True: only OPA's decision logs; False: only agents' runs

    @classmethod
    def of(cls, workspace: str, runs: OriginSelection, **filters: Any) -> RunFilter:
        """A filter of the runs an origin selection chooses (and ``filters``)."""
        return cls(workspace, **filters, origin=runs.origin, replay_id=runs.replay_id)

    def where(self) -> tuple[list[str], list[Any]]:
        """The filter as SQL conditions on ``RUNS`` (``?`` placeholders) and their values."""
        conds: list[str] = ["workspace = ?"]
        params: list[Any] = [self.workspace]

        def eq(col: str, value: Any) -> None:
            conds.append(f"{col} = ?")
            params.append(value)

        if self.origin not in (None, ALL):
            eq("origin", self.origin)
        if self.replay_id is not None:
            eq("replay_id", self.replay_id)
        if self.workflow is not None:
            eq("workflow", self.workflow)
        if self.agent is not None:
            eq("agent_id", self.agent)
        if self.decision_log is not None:
            eq("decision_log", self.decision_log)
        if self.outcome == "running":
            conds.append("outcome IS NULL AND decision_log = ?")
            params.append(False)
        elif self.outcome is not None:
            eq("outcome", self.outcome)
        if self.since is not None:
            conds.append("started >= ?")
            params.append(self.since)
        if self.until is not None:
            conds.append("started < ?")
            params.append(self.until)
        if self.has_denial is not None:
            conds.append("denials > 0" if self.has_denial else "denials = 0")
        return conds, params


class RunIndexProjection(Projection[SQLView]):
    """Folds each batch of events into the rows of the runs it touches."""

    name = "run_index"
    topics = ()  # every event

    def process_event(self, domain_event: LedgerBatch, tracking: Tracking) -> None:
        """Fold one batch of ledger entries and record its tracking, in one transaction."""
        with self.view.batch(domain_event.start, tracking) as tx:
            rows = [r for r in domain_event.rows if r.index >= tx.position]
            if tx.done or not rows:
                return
            entries = [(r.index, _decode_entry(r.data)) for r in rows]
            keys = [(e.event.workspace, e.event.run_id) for _, e in entries]
            tx.prefetch(RUNS, RUNS.key, keys)
            runs: dict[tuple[str, str], RunSummary] = {}
            for key, (index, entry) in zip(keys, entries, strict=True):
                s = runs.get(key)
                if s is None:
                    row = tx.get(RUNS, key)
                    s = runs[key] = RunSummary.of_row(row) if row is not None else \
                        RunSummary(key[0], key[1], index, entry.event.time)
                s.apply(index, entry)
            for s in runs.values():
                tx.put(RUNS, s.to_row())


class RunIndex(ReadModel[SQLView]):
    """Run summaries by (workspace, run_id), read after the view has caught up with the ledger."""

    def __init__(self, store: LedgerStore, view: SQLView | None = None, *, wait_s: float = 10.0,
                 batch_size: int = BATCH) -> None:
        if view is None:  # in memory: rebuilt from the ledger's first entry on the first read
            view = SQLiteView(RunIndexProjection.name, [RUNS], None)
        super().__init__(store, RunIndexProjection(view), wait_s=wait_s, batch_size=batch_size)

    def get(self, workspace: str, run_id: str, position: int | None = None) -> RunSummary | None:
        """One run's summary, if the run exists (once the index has reached ``position``:
        default the ledger's size now)."""
        self.ready(position)
        rows = self.view.query(f"SELECT * FROM {RUNS.name} WHERE workspace = ? AND run_id = ?",
                               (workspace, run_id), RUNS)
        return RunSummary.of_row(rows[0]) if rows else None

    def page(
        self, flt: RunFilter, limit: int, after: int | None, descending: bool
    ) -> tuple[list[RunSummary], int | None]:
        """One page of matching runs and the cursor (first_index of the last run) for the next."""
        self.ready()
        conds, params = flt.where()
        if after is not None:
            conds.append("first_index < ?" if descending else "first_index > ?")
            params.append(after)
        sql = (f"SELECT * FROM {RUNS.name} WHERE {' AND '.join(conds)} ORDER BY first_index "
               f"{'DESC' if descending else 'ASC'} LIMIT ?")
        found = [RunSummary.of_row(r) for r in self.view.query(sql, (*params, limit + 1), RUNS)]
        more = len(found) > limit
        out = found[:limit]
        return out, (out[-1].first_index if more and out else None)

    def catalogue(self, *, workflow: str | None = None, since: str | None = None,
                  origins: Collection[str] | None = (PRODUCTION,), finished_only: bool = True,
                  limit: int | None = None, workspace: str | None = None) -> list[tuple[str, str]]:
        """(workspace, run_id) of the runs replay may select, oldest first: of ``workflow``,
        started at or after ``since``, of ``origins`` (None: any), finished unless not
        ``finished_only``, of ``workspace`` (None: any); never OPA's decision logs."""
        self.ready()
        conds = ["(source_kind IS NULL OR source_kind <> ?)"]
        params: list[Any] = [DECISION_LOG_SOURCE]
        if workspace is not None:
            conds.append("workspace = ?")
            params.append(workspace)
        if workflow is not None:
            conds.append("workflow = ?")
            params.append(workflow)
        if since:
            conds.append("started >= ?")
            params.append(since)
        if origins is not None:
            chosen: Sequence[str] = sorted(origins)
            if not chosen:
                return []
            conds.append(f"origin IN ({', '.join('?' for _ in chosen)})")
            params.extend(chosen)
        if finished_only:
            conds.append("outcome IS NOT NULL")
        sql = f"SELECT workspace, run_id FROM {RUNS.name} WHERE {' AND '.join(conds)} ORDER BY first_index"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(r["workspace"], r["run_id"]) for r in self.view.query(sql, params)]
