"""Halts from the ledger itself: what is halted now, folded from a workspace's ``halt.set`` and
``halt.cleared`` platform records (written only by the platform, see ``api/halts.py``).

The API serves these (``GET /v1/halts``); in the embedded mode the agent runtime reads them here
straight from the ledger store (:class:`LedgerHalts`, through ``ingest.embedded.LedgerPlatform``).
An agent on another host asks the API with ``tachograph.halts.HttpHalts``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from domain.ports import EntryRow, LedgerStore
from tachograph.contract.canonical import loads
from tachograph.halts import SCOPES, Halt, HaltSet

HALT_TYPES = ("halt.set", "halt.cleared")


def identity(actor: Mapping[str, Any]) -> str:
    """Who acted, as halts show it: the key's name and id (as the console writes ``by``)."""
    name, key_id = actor.get("name"), actor.get("key_id")
    return f"{name} (apikey:{key_id})" if name else f"apikey:{key_id}"


class HaltFold:
    """The halts in force in one workspace, folded from its halt records in ledger order.

    A ``halt.set`` on a target already halted changes nothing (the first one stays in force);
    a ``halt.cleared`` ends the halt on its target. The ETag names the last record folded.
    """

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self.last_index = -1
        self._halts: dict[tuple[str, str], Halt] = {}

    def apply(self, records: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Fold ``(ledger index, record body)`` pairs, oldest first."""
        for index, rec in records:
            data = rec["data"]
            key = (str(data["scope"]), str(data["target"]))
            if rec["type"] == "halt.set":
                self._halts.setdefault(key, Halt(key[0], key[1], str(data["reason"]),
                                                 identity(rec["actor"]), str(rec["time"]), index))
            elif rec["type"] == "halt.cleared":
                self._halts.pop(key, None)
            self.last_index = max(self.last_index, index)

    def snapshot(self) -> HaltSet:
        """The halts in force, broadest scope first, then by target."""
        halts = sorted(self._halts.values(), key=lambda h: (SCOPES.index(h.scope), h.target))
        return HaltSet(self.workspace, tuple(halts), f'"halts-{self.last_index + 1}"')


class LedgerHalts:
    """The halts of any workspace of a ledger store, caught up on every read: one indexed query
    for the halt records written since the last read (none, usually)."""

    def __init__(self, store: LedgerStore, page: int = 1000) -> None:
        self.store = store
        self.page = page
        self._folds: dict[str, HaltFold] = {}
        self._lock = threading.Lock()

    def current(self, workspace: str, fresh: bool = False) -> HaltSet:
        """The halts of ``workspace`` in force now (always read from the store: ``fresh`` is moot)."""
        with self._lock:
            fold = self._folds.setdefault(workspace, HaltFold(workspace))
            while True:
                rows = self.store.records_of_types(workspace, HALT_TYPES, fold.last_index, self.page)
                fold.apply((r.index, loads(r.data)["record"]) for r in rows)
                if len(rows) < self.page:
                    return fold.snapshot()

    def history(self, workspace: str, limit: int = 50) -> list[tuple[int, dict[str, Any]]]:
        """The workspace's latest halt records, newest first, as (ledger index, record body)."""
        rows: list[EntryRow] = []
        after = -1
        while True:
            page = self.store.records_of_types(workspace, HALT_TYPES, after, self.page)
            rows = (rows + page)[-limit:]
            if len(page) < self.page:
                break
            after = page[-1].index
        return [(r.index, loads(r.data)["record"]) for r in reversed(rows)]
