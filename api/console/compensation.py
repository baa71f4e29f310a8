"""Compensating runs: how the console records the revert of a change.

One writer per run: the platform never writes into an agent's run, open or completed (and the
contract lets nothing but ``feedback.recorded`` follow ``run.completed``). A revert is recorded as
a run of its own in the same workspace, labelled with the run and change it reverts:
``run.started`` → ``change.proposed`` (before and after swapped) → ``change.applied`` →
``run.completed``, built and checked by the one run-event builder (``tachograph.builder``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tachograph.builder import RunLog, RunSpec

REVERTS_RUN = "reverts_run"
REVERTS_CHANGE = "reverts_change"
_IDENT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def revert_run_id(run_id: str, change_id: str) -> str:
    """``<run_id>.revert-<change_id>``, hash-shortened when too long or not a valid run id."""
    plain = f"{run_id}.revert-{change_id}"
    if _IDENT.match(plain):
        return plain
    digest = hashlib.sha256(f"{run_id}\n{change_id}".encode()).hexdigest()[:40]
    return f"{run_id[:70]}.revert-{digest}"


def bounded_event_id(run_id: str, tail: str, prefix: str) -> str:
    """``<run_id><tail>`` as an event id, or a hash of the run id when that is over 128 characters."""
    eid = f"{run_id}{tail}"
    if len(eid) <= 128:
        return eid
    return f"{prefix}{hashlib.sha256(run_id.encode()).hexdigest()[:40]}{tail}"


def revert_event_id(revert_run: str, seq: int) -> str:
    """The event id of a compensating run's event (at most 128 characters)."""
    return bounded_event_id(revert_run, f".{seq}", "revert-")


@dataclass(frozen=True)
class Reverted:
    """What a compensating run says it reverted, read back from its ``run.started``."""

    run_id: str
    change_id: str
    reason: str | None


def reverted_by_run(started: dict[str, Any]) -> Reverted | None:
    """The run and change a ``run.started`` event's labels say it reverts (None if none)."""
    labels = started["data"].get("labels") or {}
    run, change = labels.get(REVERTS_RUN), labels.get(REVERTS_CHANGE)
    if not isinstance(run, str) or not isinstance(change, str):
        return None
    given = started["data"].get("input") or {}
    reason = given.get("reason")
    return Reverted(run, change, reason if isinstance(reason, str) else None)


REVERT_WORKFLOW = "console.revert"


def compensating_events(
    *,
    original_start: dict[str, Any],
    change: dict[str, Any],
    by: str,
    reason: str | None,
    time: str,
    agent: Mapping[str, str],
) -> list[dict[str, Any]]:
    """The four events of the run that reverts ``change`` (a ``change.proposed`` data object) of
    the run begun by ``original_start``, each checked against the contract and the run rules
    (ContractError or RunRuleError says which broke)."""
    ws, run_id = original_start["workspace"], original_start["run_id"]
    change_id = change["change_id"]
    undo_id = f"{change_id}.revert"
    if len(undo_id) > 512:  # the contract's limit on a change id
        undo_id = f"{change_id[:400]}.revert-{hashlib.sha256(change_id.encode()).hexdigest()[:40]}"
    started = original_start["data"]
    spec = RunSpec(
        workspace=ws, run_id=revert_run_id(run_id, change_id), agent=agent,
        # a workflow of its own, so reverts do not count as successful outcomes of the
        # original workflow in cost per outcome (and its kill switch cannot block an undo)
        workflow=REVERT_WORKFLOW, mode="execute", risk_tier=started["risk_tier"],
        input={"run_id": run_id, "change_id": change_id, "reason": reason, "workflow": started["workflow"]},
        labels={REVERTS_RUN: run_id, REVERTS_CHANGE: change_id},
    )
    log = RunLog(spec, event_ids=revert_event_id)
    log.build("run.started", spec.started_data(), time)
    log.build("change.proposed", {"change_id": undo_id, "target": change["target"], "before": change["after"],
                                  "after": change["before"], "reversible": False}, time)
    log.build("change.applied", {"change_id": undo_id}, time)
    log.build("run.completed", {"outcome": "succeeded",
                                "result": {"reverted_run": run_id, "reverted_change": change_id, "by": by}}, time)
    return log.events
