"""The embedded transport and platform: an agent run recorded straight into a ledger in this
process (development, tests, the demo), with halts and approvals read from the same ledger.

The runtime finds it through the ``tachograph.transports`` entry point (``embedded:/data/dir``,
see ``api/embedded.py``); code that already holds a :class:`~domain.ledger.Ledger` uses
:func:`embedded_runtime`. Events are appended as they are sent, from a sender thread,
through the same validate-and-append path as the Kafka worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from domain.approvals import ApprovalConflict, ApprovalRow, record_decision
from domain.ledger import Ledger
from domain.ports import Incoming, Source
from ingest.halts import LedgerHalts
from ingest.policies import LedgerPolicies
from tachograph.builder import rfc3339
from tachograph.halts import HaltSet
from tachograph.platform import ApprovalStatus, Platform
from tachograph.runtime import Runtime
from tachograph.transports import BufferedSender

log = logging.getLogger(__name__)


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
    """Halts and approvals of a ledger in this process.

    An approval's status is judged on ``clock``, by default the ledger's own: the clock its
    timeouts were computed on when the requests were appended.
    """

    def __init__(self, ledger: Ledger, *, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] = time.sleep, poll_s: float = 0.05) -> None:
        self.ledger = ledger
        self.clock = clock or ledger.clock
        self.sleep = sleep
        self.poll_s = poll_s
        self._halts = LedgerHalts(ledger.store)
        self._policies = LedgerPolicies(ledger.store)

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

    def policy_fail_closed(self, workspace: str) -> tuple[str, ...] | None:
        """The fail-closed setting of the workspace's policy in force (None: no policy is)."""
        active = self._policies.fold(workspace).active
        return None if active is None else active.fail_closed

    def close(self) -> None:
        """Nothing to release (the ledger belongs to the caller)."""


def embedded_runtime(ledger: Ledger, workspace: str, *, name: str = "agent",
                     platform: Platform | None = None, **runtime: Any) -> Runtime:
    """A runtime recording into ``ledger`` in this process, halts and approvals from it too
    (``platform``: another source of them, e.g. one that wraps :class:`LedgerPlatform`)."""
    return Runtime(workspace=workspace, transport=LedgerTransport(ledger, name=name),
                   platform=platform if platform is not None else LedgerPlatform(ledger), **runtime)


Verdict = tuple[str, str | None]
"""A stand-in person's verdict on one approval: ``approved`` or ``rejected``, and a reason."""
ApprovalPolicy = Callable[[ApprovalRow], Verdict | None]
"""How a stand-in person decides an approval (None: leave it pending, e.g. to let it expire)."""


class StandInApprover:
    """A stand-in person: decides a workspace's pending approvals through the platform, as a named
    person would in the console, while in-process agents wait for them (tests and the demo).

    It is not a shortcut around the approval rules: every decision goes through
    :func:`domain.approvals.record_decision` (an ``approval.decision`` record by ``by``), and the
    waiting run then records its own ``approval.decided`` repeating it. A watcher thread reads the
    pending approvals every ``poll_s`` and asks ``policy`` about each one once. Use it as a
    context manager; an error in the thread is raised again when it stops.
    """

    def __init__(self, ledger: Ledger, workspace: str, by: str, policy: ApprovalPolicy, *,
                 clock: Callable[[], float] | None = None, poll_s: float = 0.01) -> None:
        self.ledger = ledger
        self.workspace = workspace
        self.by = by
        self.policy = policy
        self.clock = clock or ledger.clock
        self.poll_s = poll_s
        self.actor = {"name": by, "role": "approver", "kind": "stand-in"}
        self.decided: list[tuple[str, str]] = []
        """(approval_id, decision) in the order decided."""
        self.conflicts: list[str] = []
        """Approvals that could no longer be decided when it tried (expired, or their run ended)."""
        self._asked: set[str] = set()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, name=f"stand-in-approver-{workspace}",
                                        daemon=True)

    def start(self) -> StandInApprover:
        """Start watching."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; raise the error that stopped the watcher, if any."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> StandInApprover:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decide_pending(self) -> int:
        """Decide every pending approval the policy has a verdict on; how many were decided."""
        done = 0
        after = -1
        while True:
            page = self.ledger.store.approval_page(self.workspace, decided=False, now=self.clock(),
                                                   after=after)
            if not page:
                return done
            for row in page:
                if row.approval_id not in self._asked:
                    self._asked.add(row.approval_id)
                    done += self._decide(row)
            after = page[-1].requested_index

    def _decide(self, row: ApprovalRow) -> int:
        verdict = self.policy(row)
        if verdict is None:
            return 0
        decision, reason = verdict
        now = self.clock()
        try:
            record_decision(self.ledger, self.workspace, row.approval_id, decision, self.by, self.actor,
                            reason, rfc3339(now), now, run_id=row.run_id)
        except ApprovalConflict as e:  # it expired or its run ended meanwhile: nothing to decide
            log.info("stand-in approver: %s", e)
            self.conflicts.append(row.approval_id)
            return 0
        self.decided.append((row.approval_id, decision))
        return 1

    def _watch(self) -> None:
        try:
            while not self._stop.is_set():
                self.decide_pending()
                self._stop.wait(self.poll_s)
        except BaseException as e:  # kept and raised again by stop(): never lost
            self._error = e
