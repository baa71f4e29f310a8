"""Recorded runs read back from the ledger store, ready to replay."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.errors import NotFoundError
from domain.origins import AUDIT, COMPENSATION, PRODUCTION, REPLAY, run_origin
from domain.ports import EntryRow, LedgerStore
from projections.run_index import RunIndex
from tachograph.contract.canonical import loads

__all__ = ["AUDIT", "COMPENSATION", "PRODUCTION", "REPLAY", "RecordedRun", "event_of", "load_runs"]


@dataclass
class RecordedRun:
    """One run as recorded: its events up to ``run.completed`` and any feedback after it."""

    workspace: str
    run_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    source_kind: str | None = None
    """The source kind the ledger stored with the run's ``run.started`` (who wrote it)."""

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
        """``production``, ``replay``, ``audit`` or ``compensation``: from who wrote its
        ``run.started`` (:func:`domain.origins.run_origin`; docs/decisions/0005-origins.md)."""
        return run_origin(self.source_kind, self.started).origin

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


def _source_kind(entry: Mapping[str, Any]) -> str | None:
    kind = (entry.get("source") or {}).get("kind")
    return kind if isinstance(kind, str) else None


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
    index: RunIndex | None = None,
    workspace: str | None = None,
) -> list[RecordedRun]:
    """Recorded runs of a workflow, oldest first (``since`` an RFC 3339 date or time).

    Only runs of the given ``origins`` (default: production runs; None: every run), so replays,
    audit runs and compensating runs are left out unless asked for; only finished runs unless
    ``finished_only`` is False. OPA's decision logs are no agent's runs and never selected. Runs
    named in ``run_ids`` are returned whatever their origin (the caller says why one cannot be
    replayed); an unknown one raises NotFoundError.

    The runs are chosen from the run ``index`` (the catalogue, projected with its position kept)
    and only theirs are read from the store; without one, an index in memory is built from the
    ledger for this call. ``workspace``: only that workspace's runs.
    """
    if run_ids:
        return _by_id(store, run_ids, finished_only)
    if index is None:
        index = RunIndex(store)
        try:
            chosen = index.catalogue(workflow=workflow, since=since, origins=origins,
                                     finished_only=finished_only, limit=limit, workspace=workspace)
        finally:
            index.close()
    else:
        chosen = index.catalogue(workflow=workflow, since=since, origins=origins,
                                 finished_only=finished_only, limit=limit, workspace=workspace)
    return [_load(store, ws, run_id) for ws, run_id in chosen]


def _load(store: LedgerStore, workspace: str, run_id: str) -> RecordedRun:
    run = RecordedRun(workspace, run_id)
    for row in store.run_entries(workspace, run_id):
        if row.seq == 0:
            run.source_kind = _source_kind(loads(row.data))
        run.add(event_of(row))
    return run


def _by_id(store: LedgerStore, run_ids: Iterable[str], finished_only: bool = True) -> list[RecordedRun]:
    out: list[RecordedRun] = []
    for run_id in run_ids:
        workspaces = store.workspaces_of_run(run_id)
        if not workspaces:
            raise NotFoundError(f"no recorded run {run_id!r}")
        for ws in workspaces:
            run = _load(store, ws, run_id)
            if finished_only and run.completed is None:
                raise NotFoundError(f"run {run_id!r} has not completed; only finished runs replay")
            out.append(run)
    return out
