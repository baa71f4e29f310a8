"""Recorded runs read back from the ledger store, ready to replay."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.errors import NotFoundError
from domain.ports import EntryRow, LedgerStore
from tachograph.contract.canonical import loads


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
    include_replays: bool = False,
) -> list[RecordedRun]:
    """Finished recorded runs of a workflow, oldest first (``since`` an RFC 3339 date or time).

    Runs that are themselves replays (``replay_of`` set) are left out unless asked for.
    """
    if run_ids:
        return _by_id(store, run_ids)
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
                or (not include_replays and d.get("replay_of") is not None)
                or (cutoff and ev["time"] < cutoff)
            ):
                skipped.add(key)
                continue
            runs[key] = RecordedRun(row.workspace, row.run_id, [ev])
            continue
        run = runs.get(key)
        if run is not None:
            run.add(event_of(row))
    done = [r for r in runs.values() if r.completed is not None]
    return done[:limit] if limit is not None else done


def _by_id(store: LedgerStore, run_ids: Iterable[str]) -> list[RecordedRun]:
    out: list[RecordedRun] = []
    for run_id in run_ids:
        workspaces = store.workspaces_of_run(run_id)
        if not workspaces:
            raise NotFoundError(f"no recorded run {run_id!r}")
        for ws in workspaces:
            run = RecordedRun(ws, run_id)
            for row in store.run_entries(ws, run_id):
                run.add(event_of(row))
            if run.completed is None:
                raise NotFoundError(f"run {run_id!r} has not completed; only finished runs replay")
            out.append(run)
    return out
