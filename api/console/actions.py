"""Console actions written into the ledger: approval decisions and reverts in the run they belong
to, and a record of every action (who, what, when) in the workspace's audit run."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from api.console.board import ChangeItem
from api.console.session import Session
from api.deps import Services
from domain.canonical import dumps, loads
from domain.errors import NotFoundError, RunRuleError, TachographError
from domain.events import SPEC
from domain.ledger import iso
from domain.ports import Incoming, Source
from domain.run import RunState

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


def console_event_id(run_id: str, seq: int) -> str:
    """An event id for a console-written event of a run (at most 128 characters)."""
    eid = f"{run_id}.console-{seq}"
    if len(eid) <= 128:
        return eid
    return f"console-{hashlib.sha256(run_id.encode()).hexdigest()[:40]}-{seq}"


class RunWriter:
    """Appends console-made events to a run, checking the run rules first (one writer at a time)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._lock: threading.Lock = services.ingest_lock

    def append(self, workspace: str, run_id: str, etype: str, data: dict[str, Any],
               before: Callable[[], None] | None = None) -> int:
        """Append one event as the run's next seq; return its ledger index.

        ``before`` runs after the run rules accepted the event and before it is appended (a
        revert hook); if it raises, nothing is appended.
        """
        ledger = self.services.ledger
        with self._lock:
            rows = ledger.store.run_entries(workspace, run_id)
            if not rows:
                raise NotFoundError(f"no run {run_id!r}")
            state = RunState(workspace, run_id)
            for r in rows:
                state.apply(loads(r.data)["event"], r.leaf_hash.hex())
            seq = state.next_seq
            event = {
                "spec": SPEC, "event_id": console_event_id(run_id, seq), "workspace": workspace,
                "run_id": run_id, "seq": seq, "type": etype, "time": iso(self.services.clock()),
                "agent": dict(CONSOLE_AGENT), "data": data,
            }
            try:
                state.check(event)
            except RunRuleError as e:
                raise ConsoleActionError(f"cannot record {etype} in run {run_id!r}: {e}") from e
            if before is not None:
                before()
            report = ledger.append([Incoming(dumps(event), Source(kind="console", name=f"{workspace}/console"))])
        result = report.results[0]
        if result.status != "accepted" or result.index is None:
            raise ConsoleActionError(f"the ledger did not accept {etype} for run {run_id!r}: "
                                     f"{result.status} ({result.reason})")
        return result.index


def record_action(services: Services, session: Session, action: str, path: str,
                  target: Mapping[str, Any]) -> int:
    """Record a console action in the workspace's audit run with the person's identity."""
    key = services.keys.get(session.key_id)
    return services.audit.record(key, f"console.{action}", "POST", path, {},
                                 {**target, "by": session.identity})


def decide(services: Services, session: Session, run_id: str, approval_id: str, decision: str,
           reason: str | None) -> int:
    """Write ``approval.decided`` by the signed-in person; return its ledger index."""
    if decision not in ("approved", "rejected"):
        raise ConsoleActionError(f"decision must be approved or rejected, not {decision!r}")
    data: dict[str, Any] = {"approval_id": approval_id, "decision": decision, "by": session.identity}
    if reason:
        data["reason"] = reason[:2000]
    index = RunWriter(services).append(session.workspace, run_id, "approval.decided", data)
    record_action(services, session, "approval.decide", f"/console/approvals/{run_id}/{approval_id}",
                  {"run_id": run_id, "approval_id": approval_id, "decision": decision,
                   "ledger_index": index})
    return index


def revert(services: Services, session: Session, change: ChangeItem, workflow: str | None,
           hooks: Mapping[str, RevertHook], reason: str | None) -> int:
    """Undo a change (its workflow's revert hook first, if any), then write ``change.reverted``."""
    if not change.reversible:
        raise ConsoleActionError(f"change {change.change_id!r} is irreversible: it cannot be undone here")
    if change.reverted:
        raise ConsoleActionError(f"change {change.change_id!r} was already reverted by {change.reverted_by}")
    path = f"/console/changes/{change.run_id}/{change.change_id}/revert"
    hook = hooks.get(workflow or "")
    data: dict[str, Any] = {"change_id": change.change_id, "by": session.identity}
    if reason:
        data["reason"] = reason[:2000]

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

    index = RunWriter(services).append(change.workspace, change.run_id, "change.reverted", data,
                                       before=call_hook)
    record_action(services, session, "change.revert", path,
                  {"run_id": change.run_id, "change_id": change.change_id, "hook": hook is not None,
                   "ledger_index": index})
    return index
