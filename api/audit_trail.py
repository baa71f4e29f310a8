"""Record every read of an audit history or evidence in the ledger itself (who, what, when).

Design (no new event type): each workspace gets one audit run per UTC day, run id
``audit-YYYY-MM-DD``, workflow ``tachograph.audit``. Its ``run.started`` (seq 0) is written with
the first read of the day; every read is a ``tool.called`` event with tool ``tachograph.api.read``,
``side_effect = "read"``, the reading key as the agent (``apikey:<id>``) and the request in
``args``. Audit runs are never completed (nothing but feedback may follow ``run.completed``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from api.keys_store import ApiKey
from domain.canonical import dumps
from domain.errors import TachographError
from domain.events import SPEC
from domain.ledger import Ledger
from domain.ports import Incoming, Source

AUDIT_WORKFLOW = "tachograph.audit"
READ_TOOL = "tachograph.api.read"
API_AGENT = {"id": "tachograph-api", "version": "1"}


class AuditTrailError(TachographError):
    """A read could not be recorded in the ledger, so it is refused (HTTP 503)."""


def audit_run_id(ts: float) -> str:
    """The audit run of the UTC day of ``ts``."""
    return "audit-" + datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditTrail:
    """Appends one ``tool.called`` event per audited read to the workspace's audit run of the day."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.clock = clock
        self._next: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _next_seq(self, workspace: str, run_id: str) -> int:
        key = (workspace, run_id)
        if key not in self._next:
            rows = self.ledger.store.run_entries(workspace, run_id)
            self._next[key] = (rows[-1].seq or 0) + 1 if rows else 0
        return self._next[key]

    def _event(self, workspace: str, run_id: str, seq: int, etype: str, ts: float,
               agent: Mapping[str, str], data: dict[str, Any]) -> bytes:
        return dumps(
            {
                "spec": SPEC,
                "event_id": f"{run_id}-{seq}",
                "workspace": workspace,
                "run_id": run_id,
                "seq": seq,
                "type": etype,
                "time": _time(ts),
                "agent": dict(agent),
                "data": data,
            }
        )

    def record(self, key: ApiKey, action: str, method: str, path: str,
               query: Mapping[str, str], target: Mapping[str, Any]) -> int:
        """Append the record of one read; return its ledger index (raises if it was not stored)."""
        ts = self.clock()
        ws, run_id = key.workspace, audit_run_id(ts)
        args = {
            "action": action,
            "key_id": key.id,
            "role": key.role,
            "method": method,
            "path": path,
            "query": dict(query),
            "target": dict(target),
        }
        with self._lock:
            for _attempt in range(3):
                seq = self._next_seq(ws, run_id)
                raws: list[bytes] = []
                if seq == 0:
                    raws.append(self._event(ws, run_id, 0, "run.started", ts, API_AGENT, {
                        "workflow": AUDIT_WORKFLOW, "mode": "execute", "risk_tier": "low",
                        "labels": {"kind": "audit-trail"},
                    }))
                    seq = 1
                raws.append(self._event(ws, run_id, seq, "tool.called", ts,
                                        {"id": f"apikey:{key.id}", "version": key.role}, {
                    "call_id": f"read-{seq}", "tool": READ_TOOL, "args": args, "status": "ok",
                    "latency_ms": 0, "side_effect": "read",
                }))
                report = self.ledger.append([Incoming(r, Source(kind="audit", name=f"{ws}/{key.id}"))
                                             for r in raws])
                last = report.results[-1]
                if last.status == "accepted" and last.index is not None:
                    self._next[(ws, run_id)] = seq + 1
                    return last.index
                self._next.pop((ws, run_id), None)  # another writer moved the run on: reload
        raise AuditTrailError(f"could not record this read in the ledger: {last.reason}")
