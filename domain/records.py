"""Platform records: what the platform itself writes into the ledger (entry kind ``record``).

A record is not an event: it never goes through ``Ledger.append`` (which writes only entries
of kind ``event`` from the event contract), so no publisher key can write or block one. The
ledger writes it with ``Ledger.append_records``; the bytes of its entry are the canonical JSON

    {"index": N, "kind": "record", "log": ORIGIN, "received": TIME,
     "record": {"type", "workspace", "time", "actor", "data", "record_id"}}

and ``record_id`` is ``record/N``: unique by position, and never a valid event id (``/`` is not
in the event id alphabet), so records and events share the index columns without clashing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.errors import TachographError

RECORD_KIND = "record"
RECORD_TYPES: dict[str, str] = {
    "audit.read": "a key or a signed-in person read an audit history, evidence or the audit log",
    "console.action": "a signed-in person acted in the console (sign-in, decision, revert, halt)",
    "halt.set": "a person halted a workspace, workflow, agent or run (its kill switch is on)",
    "halt.cleared": "a person cleared a halt (the kill switch is off again)",
    "approval.decision": "a person approved or rejected an approval request (API or console); "
    "the run's own approval.decided must repeat it",
    "policy.published": "an admin stored a policy revision (its Rego and data files, digest and "
    "settings); it judges nothing until it is activated",
    "policy.activated": "an admin made a stored policy revision the one in force in the workspace "
    "(OPA loads it from the bundle API)",
}
RECORD_KEYS = frozenset({"type", "workspace", "time", "actor", "data", "record_id"})
ENTRY_KEYS = frozenset({"index", "kind", "log", "received", "record"})
MAX_RECORD_BYTES = 65_536
MAX_BYTES_OF_TYPE: dict[str, int] = {"policy.published": 1_048_576 + 65_536}
"""Types whose records may be larger: a policy revision carries its files (at most 1 MiB)."""
_WORKSPACE = re.compile(r"^[a-z0-9-]{1,64}$")


class RecordError(TachographError):
    """A platform record is malformed (unknown type, bad workspace, too large); nothing is written."""


@dataclass(frozen=True)
class Record:
    """One platform record before it is written: its type, workspace, time, who acted and what."""

    type: str
    workspace: str
    time: str
    actor: Mapping[str, Any]
    data: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise RecordError unless the record may be written."""
        if self.type not in RECORD_TYPES:
            raise RecordError(f"unknown record type {self.type!r}; one of: {', '.join(RECORD_TYPES)}")
        if not _WORKSPACE.match(self.workspace):
            raise RecordError(f"record workspace {self.workspace!r} is not 1-64 of [a-z0-9-]")


def record_id(index: int) -> str:
    """The id of the record stored at ledger ``index``."""
    return f"record/{index}"


def record_body(record: Record, index: int) -> dict[str, Any]:
    """The ``record`` member of the entry at ``index`` (the one place it is built)."""
    from tachograph.contract.canonical import (
        dumps,  # here: the verifier's workers import this module lean
    )

    record.check()
    body = {
        "record": {
            "type": record.type,
            "workspace": record.workspace,
            "time": record.time,
            "actor": dict(record.actor),
            "data": dict(record.data),
            "record_id": record_id(index),
        }
    }
    size = len(dumps(body))
    limit = MAX_BYTES_OF_TYPE.get(record.type, MAX_RECORD_BYTES)
    if size > limit:
        raise RecordError(f"a {record.type} record of {size} bytes is over {limit}")
    return body


def record_shape_error(entry: Mapping[str, Any]) -> str | None:
    """Why a parsed entry of kind ``record`` is not one the ledger writes (None if it is)."""
    extra = set(entry) - ENTRY_KEYS
    if extra:
        return f"record entry has unexpected members {sorted(extra)}"
    rec = entry.get("record")
    if not isinstance(rec, dict) or set(rec) != RECORD_KEYS:
        return f"record entry's record must have exactly {sorted(RECORD_KEYS)}"
    for name in ("type", "workspace", "time", "record_id"):
        if type(rec[name]) is not str:
            return f"record's {name} is not a string: {rec[name]!r}"
    if not isinstance(rec["actor"], dict) or not isinstance(rec["data"], dict):
        return "record's actor and data must be objects"
    if rec["record_id"] != record_id(entry["index"]):
        return f"record_id {rec['record_id']!r} does not name its position {entry['index']}"
    if type(entry.get("received")) is not str:
        return "record entry's received is not a string"
    return None
