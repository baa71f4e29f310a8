"""Recorded runs read back from the ledger store, ready to replay."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.errors import NotFoundError
from domain.ports import EntryRow, LedgerStore
from tachograph.contract.canonical import loads

PRODUCTION = "production"
REPLAY = "replay"
AUDIT = "audit"
COMPENSATION = "compensation"
ORIGINS = (PRODUCTION, REPLAY, AUDIT, COMPENSATION)

_AUDIT_RUN = re.compile(r"^audit-\d{4}-\d{2}-\d{2}$")
_AUDIT_WORKFLOW = "tachograph.audit"  # api/audit_trail.py: per-day audit runs of older ledgers
_REVERT_WORKFLOW = "console.revert"  # api/console/compensation.py: the console's compensating runs
_REVERT_LABELS = ("reverts_run", "reverts_change")


def local_run_origin(started: Mapping[str, Any]) -> str:
    """Where a run came from, read from its ``run.started`` event: ``production``, ``replay``
    (``replay_of`` set), ``audit`` (an older ledger's per-day ``audit-YYYY-MM-DD`` run) or
    ``compensation`` (a console revert).

    A local stand-in until the platform's shared origin derivation lands: swap this one function
    for it (every caller in replay/ goes through :attr:`RecordedRun.origin`).
    """
    data = started["data"]
    if data.get("replay_of") is not None:
        return REPLAY
    if data.get("workflow") == _AUDIT_WORKFLOW or _AUDIT_RUN.match(str(started.get("run_id", ""))):
        return AUDIT
    labels = data.get("labels") or {}
    if data.get("workflow") == _REVERT_WORKFLOW or any(k in labels for k in _REVERT_LABELS):
        return COMPENSATION
    return PRODUCTION


@dataclass
class RecordedRun:
    """One run as recorded: its events up to ``run.completed`` and any feedback after it."""

    workspace: str
    run_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)

    @property
    def started(self) -> dict[str, Any]:
        """The ``data`` of ``run.started``."""
        data: dict[str, Any] = self.events[0]["data"]
        return data

    @property
    def completed(self) -> dict[str, Any] | None:
        """The ``data`` of ``run.completed``, if the run finished."""
        last = self.events[-1] if self.events else None
        return last["data"] if last is not None and last["type"] == "run.completed" else None

    @property
    def origin(self) -> str:
        """``production``, ``replay``, ``audit`` or ``compensation`` (see :func:`local_run_origin`)."""
        return local_run_origin(self.events[0])

    @property
    def entry_point(self) -> str | None:
        """The agent code that recorded the run (``module:function``), if the runtime wrote it."""
        value = self.started.get("entry_point")
        return value if isinstance(value, str) else None

    @property
    def agent_version(self) -> str:
        """The agent version the run recorded (its envelope's ``agent.version``)."""
        return str(self.events[0]["agent"].get("version", ""))

    @property
    def time(self) -> str:
        """When the run started."""
        value: str = self.events[0]["time"]
        return value

    def add(self, event: dict[str, Any]) -> None:
        """Add the next event in seq order."""
        if event["type"] == "feedback.recorded":
            self.feedback.append(event)
        else:
            self.events.append(event)


def event_of(row: EntryRow) -> dict[str, Any]:
    """The contract event inside a stored entry (numbers kept exact)."""
    event: dict[str, Any] = loads(row.data)["event"]
    return event


def load_runs(
    store: LedgerStore,
    *,
    workflow: str | None = None,
    since: str | None = None,
    run_ids: Sequence[str] = (),
    limit: int | None = None,
    origins: Collection[str] | None = (PRODUCTION,),
    finished_only: bool = True,
) -> list[RecordedRun]:
    """Recorded runs of a workflow, oldest first (``since`` an RFC 3339 date or time).

    Only runs of the given ``origins`` (default: production runs; None: every run), so replays,
    audit runs and compensating runs are left out unless asked for; only finished runs unless
    ``finished_only`` is False. Runs named in ``run_ids`` are returned whatever their origin (the
    caller says why one cannot be replayed); an unknown one raises NotFoundError.
    """
    if run_ids:
        return _by_id(store, run_ids, finished_only)
    cutoff = since or ""
    runs: dict[tuple[str, str], RecordedRun] = {}
    skipped: set[tuple[str, str]] = set()
    for row in store.entries():
        if row.kind != "event" or row.workspace is None or row.run_id is None:
            continue
        key = (row.workspace, row.run_id)
        if key in skipped:
            continue
        if row.seq == 0:
            ev = event_of(row)
            d = ev["data"]
            if (
                (workflow is not None and d.get("workflow") != workflow)
                or (origins is not None and local_run_origin(ev) not in origins)
                or (cutoff and ev["time"] < cutoff)
            ):
                skipped.add(key)
                continue
            runs[key] = RecordedRun(row.workspace, row.run_id, [ev])
            continue
        run = runs.get(key)
        if run is not None:
            run.add(event_of(row))
    done = [r for r in runs.values() if r.completed is not None or not finished_only]
    return done[:limit] if limit is not None else done


def _by_id(store: LedgerStore, run_ids: Iterable[str], finished_only: bool = True) -> list[RecordedRun]:
    out: list[RecordedRun] = []
    for run_id in run_ids:
        workspaces = store.workspaces_of_run(run_id)
        if not workspaces:
            raise NotFoundError(f"no recorded run {run_id!r}")
        for ws in workspaces:
            run = RecordedRun(ws, run_id)
            for row in store.run_entries(ws, run_id):
                run.add(event_of(row))
            if finished_only and run.completed is None:
                raise NotFoundError(f"run {run_id!r} has not completed; only finished runs replay")
            out.append(run)
    return out
