"""In-process recorder: appends finished replay runs' events (built by ``tachograph.builder``)
through the one ledger write path, ``Ledger.append``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.ledger import Ledger
from domain.ports import Incoming, Source
from tachograph.contract.canonical import dumps


@dataclass
class RecordTotals:
    """What recording runs into the ledger did."""

    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    problems: list[str] = field(default_factory=list)


class LedgerRecorder:
    """Buffers finished runs' events and appends them through the one ledger write path."""

    def __init__(self, ledger: Ledger, source: Source, batch_events: int = 4000) -> None:
        self.ledger = ledger
        self.source = source
        self.batch_events = batch_events
        self.totals = RecordTotals()
        self._buffer: list[Incoming] = []

    def add(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Queue one run's events (appended in order; flushed in batches)."""
        self._buffer.extend(Incoming(dumps(ev), self.source) for ev in events)
        if len(self._buffer) >= self.batch_events:
            self.flush()

    def flush(self) -> RecordTotals:
        """Append everything queued in one transaction."""
        if self._buffer:
            items: Sequence[Incoming] = self._buffer
            self._buffer = []
            report = self.ledger.append(items)
            self.totals.accepted += report.accepted
            self.totals.duplicates += report.duplicates
            self.totals.quarantined += report.quarantined
            self.totals.problems.extend(
                f"{o.run_id}/{o.event_id}: {o.reason}" for o in report.results if o.status == "quarantined"
            )
        return self.totals
