"""In-process recorder: builds contract events for a run and appends them via ``Ledger.append``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.ledger import Ledger
from domain.ports import Incoming, Source
from tachograph.contract.canonical import dumps
from tachograph.contract.events import SPEC


@dataclass(frozen=True)
class RunSpec:
    """Everything ``run.started`` says about a run, plus who acts and where."""

    workspace: str
    run_id: str
    workflow: str
    agent: Mapping[str, str]
    mode: str = "execute"
    risk_tier: str = "low"
    input: Mapping[str, Any] | None = None
    budget: Mapping[str, Any] | None = None
    labels: Mapping[str, str] | None = None
    replay_of: str | None = None

    def started_data(self) -> dict[str, Any]:
        """The ``data`` of this run's ``run.started`` event."""
        data: dict[str, Any] = {"workflow": self.workflow, "mode": self.mode, "risk_tier": self.risk_tier}
        if self.budget is not None:
            data["budget"] = dict(self.budget)
        if self.input is not None:
            data["input"] = dict(self.input)
        if self.labels:
            data["labels"] = dict(self.labels)
        if self.replay_of is not None:
            data["replay_of"] = self.replay_of
        return data


def make_event(spec: RunSpec, seq: int, etype: str, data: Mapping[str, Any], time: str) -> dict[str, Any]:
    """One contract event of ``spec``'s run (event id = run id + seq)."""
    return {
        "spec": SPEC,
        "event_id": f"{spec.run_id}-{seq}",
        "workspace": spec.workspace,
        "run_id": spec.run_id,
        "seq": seq,
        "type": etype,
        "time": time,
        "agent": dict(spec.agent),
        "data": dict(data),
    }


@dataclass
class RecordTotals:
    """What recording runs into the ledger did."""

    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    problems: list[str] = field(default_factory=list)


class LedgerRecorder:
    """Buffers finished runs' events and appends them through the one ledger write path."""

    def __init__(self, ledger: Ledger, source: Source, batch_events: int = 4000) -> None:
        self.ledger = ledger
        self.source = source
        self.batch_events = batch_events
        self.totals = RecordTotals()
        self._buffer: list[Incoming] = []

    def add(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Queue one run's events (appended in order; flushed in batches)."""
        self._buffer.extend(Incoming(dumps(ev), self.source) for ev in events)
        if len(self._buffer) >= self.batch_events:
            self.flush()

    def flush(self) -> RecordTotals:
        """Append everything queued in one transaction."""
        if self._buffer:
            items: Sequence[Incoming] = self._buffer
            self._buffer = []
            report = self.ledger.append(items)
            self.totals.accepted += report.accepted
            self.totals.duplicates += report.duplicates
            self.totals.quarantined += report.quarantined
            self.totals.problems.extend(
                f"{o.run_id}/{o.event_id}: {o.reason}" for o in report.results if o.status == "quarantined"
            )
        return self.totals
