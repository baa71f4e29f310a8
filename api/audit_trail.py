"""Record every read of an audit history or evidence, and every console action, in the ledger.

Each is a platform record (entry kind ``record``, ``domain/records.py``): type ``audit.read``
for a read, ``console.action`` for a console action, with the key as the actor and the
request in ``data``. Publisher keys write only events, so they can neither forge nor block
these records. Ledgers written before records existed hold reads as ``tool.called`` events in
per-day runs ``audit-YYYY-MM-DD`` (workflow ``tachograph.audit``); those stay readable as runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from api.keys_store import ApiKey
from domain.errors import TachographError
from domain.ledger import Ledger, iso
from domain.records import Record

LEGACY_AUDIT_WORKFLOW = "tachograph.audit"
"""The workflow of the per-day audit runs of ledgers written before platform records."""
READ = "audit.read"
ACTION = "console.action"


def actor(key: ApiKey) -> dict[str, str]:
    """Who acted, as a platform record's ``actor``: the key's id, role and name."""
    out = {"key_id": key.id, "role": key.role}
    if key.label:
        out["name"] = key.label
    return out


class AuditTrailError(TachographError):
    """A read could not be recorded in the ledger, so it is refused (HTTP 503)."""


def actor_of(key: ApiKey) -> dict[str, str]:
    """The ``actor`` of a record written for a key (or the person signed in with it)."""
    actor = {"key_id": key.id, "role": key.role}
    if key.label:
        actor["name"] = key.label
    return actor


class AuditTrail:
    """Appends one platform record per audited read or console action."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.clock = clock

    def _write(self, rtype: str, key: ApiKey, data: dict[str, Any]) -> int:
        rec = Record(rtype, key.workspace, iso(self.clock()), actor_of(key), data)
        try:
            return self.ledger.append_records([rec])[0]
        except TachographError as e:
            raise AuditTrailError(f"could not record this {rtype} in the ledger: {e}") from e

    def record(self, key: ApiKey, action: str, method: str, path: str,
               query: Mapping[str, str], target: Mapping[str, Any]) -> int:
        """Record one read (type ``audit.read``); return its ledger index (raises if not stored)."""
        return self._write(READ, key, {"action": action, "method": method, "path": path,
                                       "query": dict(query), "target": dict(target)})

    def action(self, key: ApiKey, action: str, path: str, target: Mapping[str, Any]) -> int:
        """Record one console action (type ``console.action``); return its ledger index."""
        return self._write(ACTION, key, {"action": action, "method": "POST", "path": path,
                                         "target": dict(target)})
