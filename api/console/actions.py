"""Console actions written into the ledger: approval decisions (platform records, as over the API),
reverts (each a compensating run of its own: the platform never writes into an agent's run), and a
platform record of every action (who, what, when)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from api import approvals
from api.console.board import ChangeItem
from api.console.compensation import compensating_events, revert_run_id
from api.console.session import Session
from api.deps import Services
from domain.approvals import DECISIONS, ApprovalRow
from domain.errors import ContractError, NotFoundError, RunRuleError, TachographError
from domain.ledger import iso
from domain.origins import COMPENSATION_SOURCE
from domain.ports import Incoming, Source
from tachograph.contract.canonical import dumps, loads
from tachograph.contract.rules import RunState

CONSOLE_AGENT = {"id": "tachograph-console", "version": "1"}
HOOK_GROUP = "tachograph.revert_hooks"

RevertHook = Callable[[ChangeItem, str, str | None], None]
"""Undo one applied change in the outside world: ``hook(change, by, reason)``; raise to refuse."""


class ConsoleActionError(TachographError):
    """A console action breaks a run rule or its revert hook failed; nothing was recorded (HTTP 409)."""


def load_revert_hooks() -> dict[str, RevertHook]:
    """Revert hooks registered by installed packages (entry points ``tachograph.revert_hooks``:
    name = workflow, value = ``module:function``)."""
    return {ep.name: ep.load() for ep in entry_points(group=HOOK_GROUP)}


@dataclass(frozen=True)
class Recorded:
    """Where a revert landed: the compensating run and its first ledger index."""

    index: int
    compensating_run: str


class RunWriter:
    """Records console-made reverts as compensating runs, checking the run rules first (one writer
    at a time).

    Nothing the console does goes into an agent's run: approval decisions are platform records
    (``api/approvals.py``), reverts are runs of their own (``api/console/compensation.py``).
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self._lock: threading.Lock = services.ingest_lock

    def _load(self, workspace: str, run_id: str) -> tuple[RunState, list[dict[str, Any]]]:
        rows = self.services.ledger.store.run_entries(workspace, run_id)
        if not rows:
            raise NotFoundError(f"no run {run_id!r}")
        state = RunState(workspace, run_id)
        events = []
        for r in rows:
            event = loads(r.data)["event"]
            state.apply(event, r.leaf_hash.hex())
            events.append(event)
        return state, events

    def _commit(self, workspace: str, events: list[dict[str, Any]], what: str) -> list[int]:
        """Append the events in one ledger call; every one must be accepted."""
        source = Source(kind=COMPENSATION_SOURCE, name=f"{workspace}/console")
        report = self.services.ledger.append([Incoming(dumps(e), source) for e in events])
        refused = [r for r in report.results if r.status != "accepted" or r.index is None]
        if refused:
            raise ConsoleActionError(f"the ledger did not accept {what}: "
                                     + "; ".join(f"{r.status} ({r.reason})" for r in refused))
        return [r.index for r in report.results if r.index is not None]

    def revert(self, change: ChangeItem, by: str, reason: str | None,
               before: Callable[[], None]) -> Recorded:
        """Record the revert of an applied change as a compensating run of its own (see
        ``api/console/compensation.py``), whether the change's run is open or completed: the
        agent's run is left to the agent.

        ``before`` (the revert hook) runs once the revert is known to be valid and before anything
        is appended; if it raises, nothing is appended.
        """
        ws, run_id, cid = change.workspace, change.run_id, change.change_id
        with self._lock:
            state, events = self._load(ws, run_id)
            refusal = state.revert_refusal(cid)
            if refusal is not None:
                raise ConsoleActionError(refusal)
            revert_run = revert_run_id(run_id, cid)
            if self.services.ledger.store.run_entries(ws, revert_run):
                raise ConsoleActionError(
                    f"change {cid!r} was already reverted by the compensating run {revert_run!r}")
            proposed = next(e["data"] for e in events
                            if e["type"] == "change.proposed" and e["data"]["change_id"] == cid)
            try:
                new = compensating_events(original_start=events[0], change=proposed, by=by, reason=reason,
                                          time=iso(self.services.clock()), agent=CONSOLE_AGENT)
            except (ContractError, RunRuleError) as e:
                raise ConsoleActionError(f"cannot record the compensating run {revert_run!r}: {e}") from e
            before()
            indexes = self._commit(ws, new, f"the compensating run {revert_run!r}")
            return Recorded(indexes[0], revert_run)


def record_action(services: Services, session: Session, action: str, path: str,
                  target: Mapping[str, Any]) -> int:
    """Record a console action (a ``console.action`` platform record) with the person's identity."""
    key = services.keys.get(session.key_id)
    return services.audit.action(key, f"console.{action}", path, {**target, "by": session.identity})


def decide(services: Services, session: Session, run_id: str, approval_id: str, decision: str,
           reason: str | None) -> ApprovalRow:
    """Record the signed-in person's decision the way ``POST /v1/approvals/{id}/decision`` does
    (an ``approval.decision`` platform record, never an event in the agent's run); return the
    decided approval."""
    if decision not in DECISIONS:
        raise ConsoleActionError(f"decision must be approved or rejected, not {decision!r}")
    row = approvals.decide(services, services.keys.get(session.key_id), approval_id, decision, reason,
                           run_id=run_id)
    record_action(services, session, "approval.decide", "/console/approvals/decide",
                  {"run_id": run_id, "approval_id": approval_id, "decision": decision,
                   "ledger_index": row.decision_index})
    return row


def revert(services: Services, session: Session, change: ChangeItem, workflow: str | None,
           hooks: Mapping[str, RevertHook], reason: str | None) -> Recorded:
    """Undo a change (its workflow's revert hook first, if any), then record the revert as a
    compensating run (never in the change's own run, open or completed)."""
    if not change.reversible:
        raise ConsoleActionError(f"change {change.change_id!r} is irreversible: it cannot be undone here")
    if change.reverted:
        raise ConsoleActionError(f"change {change.change_id!r} was already reverted by {change.reverted_by}")
    path = "/console/changes/revert"
    hook = hooks.get(workflow or "")
    reason = reason[:2000] if reason else None

    def call_hook() -> None:
        if hook is None:
            return
        try:
            hook(change, session.identity, reason)
        except Exception as e:  # the hook is outside code: any failure refuses the revert
            record_action(services, session, "change.revert_failed", path,
                          {"run_id": change.run_id, "change_id": change.change_id,
                           "error": f"{type(e).__name__}: {e}"[:500]})
            raise ConsoleActionError(
                f"the revert hook of workflow {workflow!r} failed, nothing was recorded: {e}") from e

    done = RunWriter(services).revert(change, session.identity, reason, call_hook)
    target: dict[str, Any] = {"run_id": change.run_id, "change_id": change.change_id, "hook": hook is not None,
                              "ledger_index": done.index, "compensating_run": done.compensating_run}
    record_action(services, session, "change.revert", path, target)
    return done
