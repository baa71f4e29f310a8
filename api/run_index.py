"""An in-memory index of run summaries, kept up to date incrementally from the ledger store."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from api.ledger_fold import LedgerFold
from domain.origins import (
    ALL,
    DECISION_LOG_SOURCE,
    PRODUCTION,
    OriginSelection,
    RunOrigin,
    origin_of_entry,
)
from domain.ports import LedgerStore


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

    def matches(self, s: RunSummary) -> bool:
        """Whether a run passes every filter that is set."""
        if s.workspace != self.workspace:
            return False
        if self.origin not in (None, ALL) and s.origin.origin != self.origin:
            return False
        if self.replay_id is not None and s.origin.replay_id != self.replay_id:
            return False
        if self.workflow is not None and s.workflow != self.workflow:
            return False
        if self.agent is not None and s.agent_id != self.agent:
            return False
        if self.decision_log is not None and s.decision_log != self.decision_log:
            return False
        if self.outcome is not None:
            if self.outcome == "running" and (s.outcome is not None or s.decision_log):
                return False
            if self.outcome != "running" and s.outcome != self.outcome:
                return False
        if self.since is not None and s.started < self.since:
            return False
        if self.until is not None and s.started >= self.until:
            return False
        return self.has_denial is None or (s.denials > 0) == self.has_denial


class RunIndex(LedgerFold):
    """Run summaries by (workspace, run_id), refreshed from entries the index has not seen yet."""

    def __init__(self, store: LedgerStore) -> None:
        super().__init__(store)
        self.runs: dict[tuple[str, str], RunSummary] = {}
        self.order: list[RunSummary] = []  # by first_index, ascending
        self.firsts: list[int] = []  # first_index of each run in ``order``

    def fold(self, index: int, entry: dict[str, Any]) -> None:
        self._apply(index, entry["event"])
        s = self.runs[(entry["event"]["workspace"], entry["event"]["run_id"])]
        if entry["event"]["type"] == "run.started":
            s.origin = origin_of_entry(entry)
            s.decision_log = s.origin.decision_log
        elif s.decision_log and (entry.get("source") or {}).get("kind") != DECISION_LOG_SOURCE:
            s.decision_log = False  # someone else wrote into it: a run like any other

    def _apply(self, index: int, ev: dict[str, Any]) -> None:
        key = (ev["workspace"], ev["run_id"])
        s = self.runs.get(key)
        if s is None:
            s = RunSummary(ev["workspace"], ev["run_id"], index, ev["time"])
            self.runs[key] = s
            self.order.append(s)
            self.firsts.append(index)
        s.events += 1
        s.last_index = index
        data = ev["data"]
        etype = ev["type"]
        if etype == "run.started":
            s.workflow, s.mode, s.risk_tier = data["workflow"], data["mode"], data["risk_tier"]
            s.agent_id, s.agent_version = ev["agent"]["id"], ev["agent"]["version"]
            s.started = ev["time"]
        elif etype == "model.called":
            s.model_calls += 1
            s.tokens += int(data["input_tokens"]) + int(data["output_tokens"])
            if data.get("priced") is False:  # unknown, not free
                s.unpriced_calls += 1
            else:
                s.cost_usd += Decimal(str(data["cost_usd"]))
        elif etype == "tool.called":
            s.tool_calls += 1
        elif etype == "policy.evaluated" and data["decision"] == "deny":
            s.denials += 1
        elif etype == "run.completed":
            s.outcome, s.completed = data["outcome"], ev["time"]

    def get(self, workspace: str, run_id: str) -> RunSummary | None:
        """One run's summary, if the run exists."""
        self.refresh()
        return self.runs.get((workspace, run_id))

    def page(
        self, flt: RunFilter, limit: int, after: int | None, descending: bool
    ) -> tuple[list[RunSummary], int | None]:
        """One page of matching runs and the cursor (first_index of the last run) for the next."""
        self.refresh()
        with self._lock:
            if descending:
                end = len(self.order) if after is None else bisect_left(self.firsts, after)
                candidates: Iterable[RunSummary] = (self.order[i] for i in range(end - 1, -1, -1))
            else:
                start = 0 if after is None else bisect_right(self.firsts, after)
                candidates = (self.order[i] for i in range(start, len(self.order)))
            out: list[RunSummary] = []
            for s in candidates:
                if flt.matches(s):
                    out.append(s)
                    if len(out) > limit:
                        break
        more = len(out) > limit
        out = out[:limit]
        return out, (out[-1].first_index if more and out else None)
