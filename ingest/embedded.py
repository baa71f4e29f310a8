"""The embedded transport and platform: an agent run recorded straight into a ledger in this
process (development, tests, the demo), with halts and approvals read from the same ledger.

The runtime finds it through the ``tachograph.transports`` entry point (``embedded:/data/dir``,
see ``api/embedded.py``); code that already holds a :class:`~domain.ledger.Ledger` uses
:func:`embedded_runtime`. Events are appended as they are sent, from a sender thread,
through the same validate-and-append path as the Kafka worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from domain.ledger import Ledger
from domain.ports import Incoming, Source
from ingest.halts import LedgerHalts
from tachograph.halts import HaltSet
from tachograph.platform import ApprovalStatus
from tachograph.runtime import Runtime
from tachograph.transports import BufferedSender


class LedgerTransport:
    """Appends events to a ledger in this process, from a sender thread (like the other transports:
    events leave as they come, through a bounded buffer; :meth:`flush` waits for the ledger).

    What queued while an append ran goes in the next transaction, up to ``max_batch``. An event
    the ledger quarantined is a :class:`DeliveryError` (with the ledger's reason) on flush.
    """

    def __init__(self, ledger: Ledger, *, max_batch: int = 500, name: str = "agent",
                 max_events: int = 10_000, max_block_s: float = 10.0) -> None:
        self.ledger = ledger
        self.name = name
        self.accepted = 0
        self.duplicates = 0
        self._source = Source(kind="agent", name=name)
        self._sender = BufferedSender(self._append, max_batch=max_batch, max_events=max_events,
                                      max_block_s=max_block_s, name="tachograph-ledger-sender")

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Queue one event for the sender thread."""
        self._sender.send(event_id, value)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the ledger has every queued event; raise DeliveryError for refused ones."""
        self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop the sender thread (the ledger stays open: it is the caller's)."""
        self._sender.close(timeout)

    def _append(self, batch: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
        report = self.ledger.append([Incoming(value, self._source) for _, value in batch])
        failures: list[tuple[str, str]] = []
        for (event_id, _), outcome in zip(batch, report.results, strict=True):
            if outcome.status == "accepted":
                self.accepted += 1
            elif outcome.status == "duplicate":
                self.duplicates += 1
            elif outcome.status == "quarantined":
                failures.append((event_id, outcome.reason or "quarantined"))
        return failures


class LedgerPlatform:
    """Halts and approvals of a ledger in this process."""

    def __init__(self, ledger: Ledger, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, poll_s: float = 0.05) -> None:
        self.ledger = ledger
        self.clock = clock
        self.sleep = sleep
        self.poll_s = poll_s
        self._halts = LedgerHalts(ledger.store)

    def halts(self, workspace: str, fresh: bool = False) -> HaltSet:
        """The halts of ``workspace`` in force now."""
        return self._halts.current(workspace)

    def approval(self, workspace: str, approval_id: str, wait_s: float) -> ApprovalStatus | None:
        """The approval's status, polling the store until it leaves ``pending`` or ``wait_s`` passes."""
        deadline = time.monotonic() + wait_s
        while True:
            row = self.ledger.store.approval(workspace, approval_id)
            if row is None:
                return None
            status = row.status(self.clock())
            if status != "pending" or time.monotonic() >= deadline:
                return ApprovalStatus(approval_id, status, row.decided_by, row.decided_at, row.reason)
            self.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """Nothing to release (the ledger belongs to the caller)."""


def embedded_runtime(ledger: Ledger, workspace: str, *, batch_size: int = 1, name: str = "agent",
                     **runtime: Any) -> Runtime:
    """A runtime recording into ``ledger`` in this process, halts and approvals from it too."""
    return Runtime(workspace=workspace, transport=LedgerTransport(ledger, batch_size=batch_size, name=name),
                   platform=LedgerPlatform(ledger), **runtime)
