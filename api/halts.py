"""Kill switches: set and clear halts on a workspace, a workflow, an agent or a run.

Every change is a platform record, ``halt.set`` or ``halt.cleared`` (who, when, scope, target,
reason), written with ``Ledger.append_records``; what is halted now is folded from those
records (``ingest/halts.py``), so every API process and every embedded agent sees the same
halts. The API (``api/routes/halts.py``) and the console's kill-switch page both call
:class:`HaltService`.

Setting a halt that is already in force changes nothing (no record; the first halt keeps who
set it, when and why) and answers ``changed=False``; clearing a target with no halt in force is
:class:`HaltNotFoundError` (404).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from api.audit_trail import actor_of
from api.keys_store import ApiKey
from api.routes.errors import BadParameter, Unavailable
from domain.errors import NotFoundError, TachographError
from domain.ledger import Ledger, iso
from domain.records import Record
from ingest.halts import LedgerHalts, identity
from tachograph.contract.events import Ident, Name
from tachograph.halts import SCOPES, Halt, HaltSet

MAX_REASON = 2000
RUN_ID = "^[A-Za-z0-9._:-]{1,128}$"
"""What a run id is (the contract's ``Ident``), as a pattern for the OpenAPI schema."""
BLANKS = " \t\r\n"
Via = Literal["api", "console"]

_TARGETS: dict[str, tuple[TypeAdapter[str], str]] = {
    "workflow": (TypeAdapter(Name), "a workflow name: 1-512 characters"),
    "agent": (TypeAdapter(Name), "an agent id: 1-512 characters"),
    "run": (TypeAdapter(Ident), "a run id: 1-128 characters from [A-Za-z0-9._:-]"),
}


class HaltRequestError(BadParameter):
    """A halt request names an unknown scope, a target no run can have (empty, too long, not a
    run id) or a reason that is missing or too long; nothing is written (HTTP 422)."""


class HaltRecordError(Unavailable):
    """The change could not be recorded in the ledger, so it did not happen (HTTP 503)."""


class HaltNotFoundError(NotFoundError):
    """No halt is in force on that scope and target, so there is nothing to clear (HTTP 404)."""


def _shown(target: str) -> str:
    return repr(target) if len(target) <= 80 else f"{target[:60]!r}... ({len(target)} characters)"


def check_target(scope: str, target: str | None, workspace: str) -> str:
    """The target a halt of ``scope`` stops (the workspace itself for scope ``workspace``);
    raises HaltRequestError naming what is wrong."""
    if scope not in SCOPES:
        raise HaltRequestError(f"unknown halt scope {scope[:40]!r}; one of: {', '.join(SCOPES)}")
    if scope == "workspace":
        if target not in (None, workspace):
            raise HaltRequestError(
                f"scope workspace takes no target: it halts the key's workspace {workspace!r}")
        return workspace
    adapter, rule = _TARGETS[scope]
    if target is None or target == "":
        raise HaltRequestError(f"scope {scope} needs a target: {rule}")
    try:
        adapter.validate_python(target)
    except ValidationError:
        raise HaltRequestError(f"{scope} target {_shown(target)} is not {rule}") from None
    return target


def check_reason(reason: str | None, required: bool) -> str | None:
    """The reason without surrounding blanks (1-2000 characters; optional when clearing)."""
    reason = (reason or "").strip(BLANKS)
    if len(reason) > MAX_REASON:
        raise HaltRequestError(f"a reason is at most {MAX_REASON} characters, not {len(reason)}")
    if not reason and required:
        raise HaltRequestError(f"say why you halt it: a reason of 1-{MAX_REASON} characters")
    return reason or None


@dataclass(frozen=True)
class HaltChange:
    """What a set or clear did: the halt it concerns, and the record written (None: none was)."""

    halt: Halt
    record_index: int | None

    @property
    def changed(self) -> bool:
        """Whether a record was written."""
        return self.record_index is not None


class HaltService:
    """Reads the halts of a workspace and writes their changes as platform records."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.clock = clock
        self.book = LedgerHalts(ledger.store)
        self._write = threading.Lock()  # a check and its record, one change at a time

    def current(self, workspace: str) -> HaltSet:
        """The halts in force in ``workspace``, with their ETag."""
        return self.book.current(workspace)

    def history(self, workspace: str, limit: int = 50) -> list[tuple[int, dict[str, Any]]]:
        """The workspace's latest halt records, newest first: (ledger index, record body)."""
        return self.book.history(workspace, limit)

    def set(self, key: ApiKey, scope: str, target: str | None, reason: str | None,
            via: Via = "api") -> HaltChange:
        """Halt a target of the key's workspace (nothing is written if it is halted already)."""
        target = check_target(scope, target, key.workspace)
        why = check_reason(reason, required=True)
        with self._write:
            existing = self.book.current(key.workspace).get(scope, target)
            if existing is not None:
                return HaltChange(existing, None)
            rec = self._append(key, "halt.set", {"scope": scope, "target": target,
                                                 "reason": why, "via": via})
        return HaltChange(Halt(scope, target, str(why), identity(rec.actor), rec.time, rec.index),
                          rec.index)

    def clear(self, key: ApiKey, scope: str, target: str | None, reason: str | None,
              via: Via = "api") -> HaltChange:
        """End the halt on a target of the key's workspace (HaltNotFoundError if there is none)."""
        target = check_target(scope, target, key.workspace)
        why = check_reason(reason, required=False)
        with self._write:
            halt = self.book.current(key.workspace).get(scope, target)
            if halt is None:
                raise HaltNotFoundError(f"no halt on {scope} {_shown(target)} is in force: nothing to clear")
            data = {"scope": scope, "target": target, "via": via, "set_index": halt.index}
            if why:
                data["reason"] = why
            rec = self._append(key, "halt.cleared", data)
        return HaltChange(halt, rec.index)

    def _append(self, key: ApiKey, rtype: str, data: dict[str, object]) -> _Written:
        rec = Record(rtype, key.workspace, iso(self.clock()), actor_of(key), data)
        try:
            index = self.ledger.append_records([rec])[0]
        except TachographError as e:
            raise HaltRecordError(f"could not record this {rtype} in the ledger: {e}") from e
        return _Written(index, rec.time, rec.actor)


@dataclass(frozen=True)
class _Written:
    index: int
    time: str
    actor: Mapping[str, Any]
