"""The one builder of agent run events: envelope, ``seq``, ids and time, checked as they are made.

Every agent run event in Tachograph is made here, whoever makes it: the agent runtime (live and
in replay), the workload generator, the OTLP mapping and the console's compensating runs. A
:class:`RunLog` numbers a run's events from ``seq`` 0, validates each against the public contract
(``ContractError`` names the field) and the run rules (``RunRuleError`` names the rule) before
it is handed on, and keeps the canonical bytes the ledger will hash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tachograph.contract.canonical import validate_event
from tachograph.contract.events import SPEC
from tachograph.contract.rules import RunState

EventIds = Callable[[str, int], str]
"""Makes an event id from the run id and ``seq``."""


def seq_event_id(run_id: str, seq: int) -> str:
    """The deterministic event id ``<run_id>-<seq>`` (replays, generated workloads, tests)."""
    return f"{run_id}-{seq}"


def rfc3339(ts: float | datetime) -> str:
    """RFC 3339 UTC text (microsecond precision) of a unix time or an aware datetime."""
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, tz=UTC)
    if when.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An RFC 3339 event time as an aware datetime."""
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))


def envelope(
    *,
    workspace: str,
    run_id: str,
    seq: int,
    etype: str,
    time: str,
    agent: Mapping[str, str],
    data: Mapping[str, Any],
    event_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
) -> dict[str, Any]:
    """One contract event as a dict (not validated: :class:`RunLog` validates what it builds)."""
    event: dict[str, Any] = {
        "spec": SPEC,
        "event_id": event_id if event_id is not None else seq_event_id(run_id, seq),
        "workspace": workspace,
        "run_id": run_id,
        "seq": seq,
        "type": etype,
        "time": time,
        "agent": dict(agent),
        "data": dict(data),
    }
    if trace_id is not None:
        event["trace_id"] = trace_id
    if span_id is not None:
        event["span_id"] = span_id
    return event


@dataclass(frozen=True)
class RunSpec:
    """Everything ``run.started`` says about a run, plus who acts, where, and its trace."""

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
    entry_point: str | None = None
    trace_id: str | None = None

    def started_data(self) -> dict[str, Any]:
        """The ``data`` of this run's ``run.started`` event."""
        data: dict[str, Any] = {"workflow": self.workflow, "mode": self.mode, "risk_tier": self.risk_tier}
        if self.budget:
            data["budget"] = dict(self.budget)
        if self.input is not None:
            data["input"] = dict(self.input)
        if self.labels:
            data["labels"] = dict(self.labels)
        if self.replay_of is not None:
            data["replay_of"] = self.replay_of
        if self.entry_point is not None:
            data["entry_point"] = self.entry_point
        return data


class RunLog:
    """Builds one run's events in order, each checked against the contract and the run rules.

    ``event_ids`` makes each event's id (default ``<run_id>-<seq>``). :meth:`build` returns the
    event and its canonical bytes; nothing is recorded if it raises.
    """

    def __init__(self, spec: RunSpec, *, event_ids: EventIds = seq_event_id) -> None:
        self.spec = spec
        self.event_ids = event_ids
        self.state = RunState(spec.workspace, spec.run_id)
        self.events: list[dict[str, Any]] = []

    @property
    def seq(self) -> int:
        """The next event's ``seq``."""
        return len(self.events)

    @property
    def completed(self) -> bool:
        """Whether ``run.completed`` has been built."""
        return self.state.completed

    def check(self, etype: str, data: Mapping[str, Any]) -> None:
        """Raise RunRuleError if an event of this type and data would break a run rule now."""
        self.state.check({"type": etype, "seq": self.seq, "data": dict(data)})

    def build(self, etype: str, data: Mapping[str, Any], time: str) -> tuple[dict[str, Any], bytes]:
        """The run's next event (validated, rule-checked, appended to :attr:`events`)."""
        seq = self.seq
        raw = envelope(
            workspace=self.spec.workspace, run_id=self.spec.run_id, seq=seq, etype=etype, time=time,
            agent=self.spec.agent, data=data, event_id=self.event_ids(self.spec.run_id, seq),
            trace_id=self.spec.trace_id,
        )
        event, canonical = validate_event(raw)
        self.state.check(event)
        self.state.apply(event, "")
        self.events.append(event)
        return event, canonical
