"""Incremental in-memory views of the ledger: fold each new event once, in index order."""

from __future__ import annotations

import threading
from typing import Any

from domain.ports import LedgerStore
from tachograph.contract.canonical import loads


class LedgerFold:
    """Base of the API's in-memory views (run index, console board): refresh folds unseen events."""

    record_types: frozenset[str] = frozenset()
    """Platform record types this view folds too (``fold_record``)."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.seen = 0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Fold in every event entry (and record of ``record_types``) appended since the last refresh."""
        with self._lock:
            size = self.store.size()
            if size <= self.seen:
                return
            for row in self.store.entries(self.seen, size):
                if row.kind == "event" and row.workspace is not None and row.run_id is not None:
                    self.fold(row.index, loads(row.data))
                elif row.kind == "record" and row.event_type in self.record_types:
                    self.fold_record(row.index, loads(row.data)["record"])
            self.seen = size

    def fold(self, index: int, entry: dict[str, Any]) -> None:
        """Apply one stored event entry (its ``event`` member is the event as published)."""
        raise NotImplementedError

    def fold_record(self, index: int, record: dict[str, Any]) -> None:
        """Apply one platform record of a type in ``record_types``."""
