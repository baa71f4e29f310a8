"""A run's origin: production, or a kind of run the platform itself wrote (docs/decisions/0005).

A run's origin is derived from who wrote its ``run.started``, the run's first entry: the
``source.kind`` the ledger stored beside the event. Each entry point sets that kind itself, and
those open to publishers (Kafka, HTTP, OTLP, JSONL import, the embedded transport) never use the
kinds below, so no publisher can make its run look like a replay, a compensation or an audit run
and drop it from production figures. Anything a run merely claims (``replay_of``, labels, its
workflow or run id) never changes its origin.

The same source kind says whether a run is OPA's decision log (``opa``, docs/decisions/0006):
production decisions, but no agent's run (no outcome, never completed), so it counts in
violation rates and nowhere runs are counted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from domain.errors import TachographError

PRODUCTION = "production"
REPLAY = "replay"
COMPENSATION = "compensation"
AUDIT = "audit"
ORIGINS = (PRODUCTION, REPLAY, COMPENSATION, AUDIT)
ALL = "all"
"""Selects runs of every origin."""

REPLAY_SOURCE = "replay"
"""Source kind of the replay engine's recorder (``replay/engine.py``: ``Source(kind="replay")``)."""
COMPENSATION_SOURCE = "console"
"""Source kind of the console's compensating runs (``api/console/actions.py``)."""
AUDIT_SOURCE = "audit"
"""Source kind of the per-day ``audit-YYYY-MM-DD`` runs of ledgers written before platform records."""

DECISION_LOG_SOURCE = "opa"
"""Source kind of OPA's decision-log runs (``POST /v1/opa/logs``): origin production, not agent runs."""

PLATFORM_SOURCES: Mapping[str, str] = MappingProxyType({
    REPLAY_SOURCE: REPLAY,
    COMPENSATION_SOURCE: COMPENSATION,
    AUDIT_SOURCE: AUDIT,
})
"""The source kinds only the platform writes, and the origin of a run begun under each."""

REPLAY_ID_LABEL = "replay.id"
"""The ``run.started`` label naming the replay a replay run belongs to."""

_REPLAY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class OriginError(TachographError):
    """An origin selection names no origin, or a replay id it cannot apply to (HTTP 422)."""


@dataclass(frozen=True)
class RunOrigin:
    """Where a run came from: its origin and, for a replay run, the replay's id.

    ``decision_log``: the run is OPA's decision log of a path and day, not an agent's run: its
    decisions count (origin production), but it is no run in run counts, never open or running.
    """

    origin: str
    replay_id: str | None = None
    decision_log: bool = False


def run_origin(source_kind: str | None, started: Mapping[str, Any] | None = None) -> RunOrigin:
    """The origin of a run from its ``run.started`` entry's source kind and that event's ``data``.

    ``replay_id`` is the ``replay.id`` label of a replay run (None for any other origin).
    """
    origin = PLATFORM_SOURCES.get(source_kind or "", PRODUCTION)
    replay_id = None
    if origin == REPLAY and started is not None:
        label = (started.get("labels") or {}).get(REPLAY_ID_LABEL)
        replay_id = label if isinstance(label, str) else None
    return RunOrigin(origin, replay_id, decision_log=source_kind == DECISION_LOG_SOURCE)


def origin_of_entry(entry: Mapping[str, Any]) -> RunOrigin:
    """The origin of the run a decoded stored entry of its ``run.started`` begins.

    ``entry`` is the entry as stored (``loads(row.data)``): ``{"event": ..., "source": ...}``.
    """
    source = entry.get("source") or {}
    return run_origin(source.get("kind"), entry["event"]["data"])


@dataclass(frozen=True)
class OriginSelection:
    """Which runs a figure counts: runs of one origin (production by default) or of all, and
    optionally only those of one replay (both must hold)."""

    origin: str = PRODUCTION
    replay_id: str | None = None

    def __post_init__(self) -> None:
        if self.origin not in (*ORIGINS, ALL):
            raise OriginError(f"origin must be one of {', '.join((*ORIGINS, ALL))}, not {self.origin!r}")
        if self.replay_id is not None and not _REPLAY_ID.match(self.replay_id):
            raise OriginError(f"replay id {self.replay_id!r} is not a replay id "
                              "(1-128 characters from A-Z a-z 0-9 . _ : -)")

    @classmethod
    def parse(cls, origin: str | None = None, replay_id: str | None = None,
              strict: bool = True) -> OriginSelection:
        """A selection from options as given (``--origin``, ``--replay-id``, query parameters):
        no origin means production, or, with a replay id, replay.

        ``strict``: a replay id with an origin other than ``replay`` or ``all``, which can select
        no run, is an OriginError; otherwise it is kept as asked (and selects nothing).
        """
        if origin is None:
            origin = PRODUCTION if replay_id is None else REPLAY
        if strict and replay_id is not None and origin not in (REPLAY, ALL):
            raise OriginError(f"a replay id selects replay runs; origin {origin!r} has none "
                              "(leave origin out or make it replay)")
        return cls(origin, replay_id)

    def matches(self, run: RunOrigin) -> bool:
        """Whether a run of this origin is selected."""
        if self.origin != ALL and run.origin != self.origin:
            return False
        return self.replay_id is None or run.replay_id == self.replay_id

    def describe(self) -> str:
        """The selection in words, for report titles: ``production runs``, ``runs of replay R``."""
        if self.replay_id is not None:
            kind = "" if self.origin in (ALL, REPLAY) else f"{self.origin} "
            return f"{kind}runs of replay {self.replay_id}"
        return "runs of every origin" if self.origin == ALL else f"{self.origin} runs"

    def to_json(self) -> dict[str, Any]:
        """The selection as JSON."""
        return {"origin": self.origin, "replay_id": self.replay_id}


PRODUCTION_RUNS = OriginSelection()
"""The default selection of every figure: production runs."""
