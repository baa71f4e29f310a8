"""Which recorded runs a full replay takes: production runs recorded by the agent code it loads.

A full replay re-runs agent code, so it can only replay runs that code recorded: the entry point
in ``run.started`` (``module:function``, written by the agent runtime) must be the replay's.
A run recorded by other code (another entry point, or none: an OTLP or JSONL run, an older
ledger's run) is *not replayable by this agent*; it is reported with the reason, never as
non-determinism. A run recorded by another version of the same entry point is replayable (that
is what a what-if after an upgrade is for); the report shows both versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from replay.history import AUDIT, COMPENSATION, PRODUCTION, REPLAY, RecordedRun
from tachograph.agents import AgentSpec

NOT_PRODUCTION = "not-production"
NO_ENTRY_POINT = "no-entry-point"
OTHER_ENTRY_POINT = "other-entry-point"
UNVERSIONED = "unversioned"
_ORIGIN_TEXT = {AUDIT: "an audit-trail run", COMPENSATION: "a compensating run (a console revert)"}


def code_version(agent: AgentSpec) -> str:
    """The version the agent code declares (``AGENT["version"]``), as the runtime records it."""
    return str(agent.identity.get("version") or UNVERSIONED)


@dataclass(frozen=True)
class NotReplayable:
    """A run the replay's agent code cannot replay, and why."""

    run_id: str
    workspace: str
    kind: str  # not-production | no-entry-point | other-entry-point
    reason: str
    entry_point: str | None
    agent_version: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"run_id": self.run_id, "workspace": self.workspace, "kind": self.kind,
                "reason": self.reason, "entry_point": self.entry_point,
                "agent_version": self.agent_version}


@dataclass
class Selection:
    """Runs a replay takes, and the runs it was given but cannot replay."""

    runs: list[RecordedRun] = field(default_factory=list)
    not_replayable: list[NotReplayable] = field(default_factory=list)


def not_production(run: RecordedRun) -> tuple[str, str] | None:
    """Why ``run`` is not a production run (kind, sentence), or None when it is one."""
    origin = run.origin
    if origin == PRODUCTION:
        return None
    what = (f"a replay of {run.started.get('replay_of')}" if origin == REPLAY
            else _ORIGIN_TEXT.get(origin, f"a {origin} run"))
    return NOT_PRODUCTION, f"{what}, not a production run"


def why_not(run: RecordedRun, entry_point: str) -> tuple[str, str] | None:
    """Why ``run`` is not replayable by the code at ``entry_point`` (kind, sentence), or None."""
    problem = not_production(run)
    if problem is not None:
        return problem
    recorded = run.entry_point
    if recorded is None:
        source = (run.started.get("labels") or {}).get("source")
        how = "ingested over OTLP" if source == "otlp" else \
            "recorded without an entry point (not by the agent runtime, or by an older ledger)"
        return NO_ENTRY_POINT, f"{how}: no agent code is known for it; step-replay its model calls " \
                               "with `tacho replay --steps`"
    if recorded != entry_point:
        return OTHER_ENTRY_POINT, f"recorded by agent code {recorded}, not {entry_point}"
    return None


def select_runs(runs: Sequence[RecordedRun], agent: AgentSpec | None, limit: int | None = None) -> Selection:
    """Split ``runs`` (oldest first) into those ``agent`` can replay and those it cannot; with no
    agent (a step replay, which needs no code) into production runs and the others.

    ``limit`` bounds the runs taken; runs passed over before the limit was reached are reported,
    later ones are not looked at.
    """
    out = Selection()
    for run in runs:
        if limit is not None and len(out.runs) >= limit:
            break
        problem = not_production(run) if agent is None else why_not(run, agent.ref)
        if problem is None:
            out.runs.append(run)
        else:
            out.not_replayable.append(NotReplayable(run.run_id, run.workspace, problem[0], problem[1],
                                                    run.entry_point, run.agent_version))
    return out


def recorded_entry_point(runs: Sequence[RecordedRun]) -> str | None:
    """The agent code of the newest production run that names one (the code to replay with when
    none is given), or None when no run names its code."""
    newest: RecordedRun | None = None
    for run in runs:  # oldest first: of runs started at the same time, the later one wins
        if run.origin == PRODUCTION and run.entry_point is not None and (
                newest is None or run.time >= newest.time):
            newest = run
    return None if newest is None else newest.entry_point
