"""The embedded transport and platform: an agent run recorded straight into a ledger in this
process (development, tests, the demo), with halts and approvals read from the same ledger.

The runtime finds it through the ``tachograph.transports`` entry point (``embedded:/data/dir``,
see ``api/embedded.py``); code that already holds a :class:`~domain.ledger.Ledger` uses
:func:`embedded_runtime`. Each event is appended as it is sent (a transaction per event unless
``batch_size`` says otherwise), through the same validate-and-append path as the Kafka worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from domain.ledger import Ledger
from domain.ports import Incoming, Source
from ingest.halts import LedgerHalts
from tachograph.errors import DeliveryError
from tachograph.halts import HaltSet
from tachograph.platform import ApprovalStatus, Platform
from tachograph.runtime import Runtime


class LedgerTransport:
    """Appends events straight to a ledger in this process.

    Events are buffered up to ``batch_size`` and appended in one transaction; a quarantined
    event is reported as a :class:`DeliveryError` (with the ledger's reason) on flush.
    """

    def __init__(self, ledger: Ledger, *, batch_size: int = 1, name: str = "agent") -> None:
        self.ledger = ledger
        self.batch_size = batch_size
        self.name = name
        self._buffer: list[tuple[str, Incoming]] = []
        self._failures: list[tuple[str, str]] = []
        self.accepted = 0
        self.duplicates = 0

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Buffer one event; append the buffer when it reaches ``batch_size``."""
        self._buffer.append((event_id, Incoming(value, Source(kind="agent", name=self.name))))
        if len(self._buffer) >= self.batch_size:
            self._append()

    def flush(self, timeout: float | None = None) -> None:
        """Append what is buffered; raise DeliveryError for events the ledger did not accept."""
        self._append()
        failures, self._failures = self._failures, []
        if failures:
            raise DeliveryError(failures)

    def close(self, timeout: float | None = None) -> None:
        """Flush the buffer."""
        self.flush(timeout)

    def _append(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        report = self.ledger.append([item for _, item in batch])
        for (event_id, _), outcome in zip(batch, report.results, strict=True):
            if outcome.status == "accepted":
                self.accepted += 1
            elif outcome.status == "duplicate":
                self.duplicates += 1
            elif outcome.status == "quarantined":
                self._failures.append((event_id, outcome.reason or "quarantined"))

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
                     platform: Platform | None = None, **runtime: Any) -> Runtime:
    """A runtime recording into ``ledger`` in this process, halts and approvals from it too
    (``platform``: another source of them, e.g. one that wraps :class:`LedgerPlatform`)."""
    return Runtime(workspace=workspace, transport=LedgerTransport(ledger, batch_size=batch_size, name=name),
                   platform=platform if platform is not None else LedgerPlatform(ledger), **runtime)
