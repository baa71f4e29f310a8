"""The Kafka ingest worker: poll → validate and append (with offsets, one transaction) → repeat.

Exactly once: the next offset of each partition is written by ``ledger.append`` in the same
transaction as the events it produced, and on start and on every rebalance the fetcher seeks
each assigned partition to the offset stored in the ledger. Kafka's committed offset is
written afterwards, for lag dashboards only; it is never read back.

With more than one core, polling and validation run in a second process (``ingest.fetch``)
while this one appends; a batch polled there but not yet appended when the worker stops or
dies is simply read again from the ledger's offsets.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from domain.ledger import AppendReport, Ledger, Parsed, unpack
from ingest.errors import IngestConfigError, NoPartitionsError
from ingest.fetch import Batch, Fetcher, FetcherProcess, Message
from ingest.gcpolicy import batch_collection
from ingest.metrics import IngestMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker consumes."""

    bootstrap: str
    topic: str = "agent-events"
    group: str = "tachograph-ingest"
    batch: int = 2000
    until_idle: float | None = None
    poll_timeout_ms: int = 200
    maintenance_every_s: float = 1.0
    assign: bool = False  # manual assignment of every partition (no group join)
    parallel: bool | None = None  # poll and validate in a second process (default: >1 core)
    broker_timeout_s: float = 300.0  # give up after Kafka keeps failing this long
    # how long a group join may take before the worker gives up with NoPartitionsError (a join
    # waits for every member to rejoin, so one stuck member delays it); 0: wait for ever
    join_timeout_s: float = 60.0
    # the worker's stable name in its group, and where the member id the coordinator gave it is
    # kept, so that a restart rejoins as the same member (ingest.membership; none: a new member)
    instance_id: str | None = None
    member_file: Path | None = None
    consumer_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerSummary:
    """What a worker did, in counts."""

    consumed: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    held: int = 0
    expired: int = 0
    batches: int = 0
    seconds: float = 0.0
    ledger_size: int = 0
    checkpoint_size: int = 0
    stopped_by: str = ""

    def to_json(self) -> dict[str, Any]:
        """Counts as JSON."""
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out


class IngestWorker:
    """Consumes one topic into a ledger, exactly once, until stopped or idle."""

    def __init__(
        self,
        ledger: Ledger,
        config: WorkerConfig,
        metrics: IngestMetrics | None = None,
        on_batch: Callable[[AppendReport, WorkerSummary], None] | None = None,
    ) -> None:
        if config.batch < 1:
            raise IngestConfigError(f"batch must be >= 1, got {config.batch}")
        if not config.topic:
            raise IngestConfigError("a topic is required")
        self.ledger = ledger
        self.config = config
        self.metrics = metrics or IngestMetrics()
        self.on_batch = on_batch
        self.summary = WorkerSummary()
        self._stop = threading.Event()
        self._stop_reason = ""
        self.assigned: set[int] = set()
        # when partitions were last assigned (None before the first assignment, however empty):
        # idle time counts from here, never from a group join still in progress
        self.assigned_at: float | None = None
        # since when the worker has been (re)joining its group without an assignment
        self.joining_since: float | None = None
        self._failure: NoPartitionsError | None = None
        parallel = config.parallel
        self.parallel = (os.cpu_count() or 1) > 1 if parallel is None else parallel

    # -- control ---------------------------------------------------------------------------
    def stop(self, reason: str = "stop") -> None:
        """Ask the loop to finish its current batch and shut down cleanly."""
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (main thread only)."""

        def handler(signum: int, _frame: Any) -> None:
            self.stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> WorkerSummary:
        """Consume until stopped (signal, ``stop()``) or idle for ``until_idle`` seconds.

        Idle time counts from the last record or the last partition assignment, whichever is
        later: a worker still joining its group (slow on a loaded machine) is not idle yet.
        """
        with batch_collection():
            return self._run()

    def _run(self) -> WorkerSummary:
        t0 = time.monotonic()
        self.joining_since = None if self.config.assign else t0
        fetch: FetcherProcess | _InProcess | None = None
        try:
            fetch = FetcherProcess(self.config) if self.parallel else _InProcess(self)
            last_record = last_maintenance = time.monotonic()
            while not self._stop.is_set():
                msg = fetch.receive(0.25)
                now = time.monotonic()
                got_batch = msg is not None and msg[0] == "batch"
                if msg is not None:
                    answer = self._handle(msg)
                    if msg[0] in _QUESTIONS and isinstance(fetch, FetcherProcess):
                        fetch.answer(answer)
                    if got_batch:
                        fetch.appended(msg[1].offsets)
                if got_batch:
                    last_record = now
                elif self.config.until_idle is not None:
                    self._stop_when_idle(self.config.until_idle, now, last_record)
                self._check_join(now)
                if now - last_maintenance >= self.config.maintenance_every_s:
                    self._maintain(idle=not got_batch)
                    last_maintenance = now
            self._finish()
        finally:
            if fetch is not None:
                fetch.close()  # batches not yet appended are re-read from the ledger's offsets
            self.summary.seconds = time.monotonic() - t0
            self.summary.stopped_by = self._stop_reason
        if self._failure is not None:
            raise self._failure
        return self.summary

    def _stop_when_idle(self, idle: float, now: float, last_record: float) -> None:
        """Stop after ``idle`` seconds without records since the later of the last record and
        the last assignment (never while a group join is in progress)."""
        since = None if self.joining_since is not None else self.assigned_at
        if since is not None and now - max(last_record, since) >= idle:
            self.stop(f"idle {idle:g}s")

    def _check_join(self, now: float) -> None:
        """Give up (NoPartitionsError, once the loop has wound down) on a join that outlasts the
        join timeout: a worker without partitions ingests nothing."""
        limit = self.config.join_timeout_s
        if self.joining_since is None or limit <= 0 or now - self.joining_since < limit:
            return
        if self._failure is None:
            self._failure = NoPartitionsError(
                f"no partitions assigned within {limit:g}s: the join of "
                f"consumer group {self.config.group!r} on {self.config.bootstrap} did not complete "
                f"(--join-timeout {limit:g}s). A join waits for every member of the group to "
                "rejoin, and one that stopped answering holds it up until its session expires (or, "
                "if it stopped polling, its max poll interval). Check the group's other workers "
                "(--verbose logs each join), or give this worker a group of its own (--group), or "
                "read every partition without a group (--assign, one worker per topic)"
            )
            self.stop("no partitions assigned")

    def _handle(self, msg: Message) -> Any:
        """Act on one message from the fetcher; questions get an answer."""
        kind = msg[0]
        if kind == "batch":
            self._append(msg[1])
        elif kind == "idle":
            self._update_lag(msg[1])
        elif kind == "assigned":
            stored = self.ledger.store.offsets(self.config.group)
            self.assigned = {p for _, p in msg[1]}
            self.assigned_at = time.monotonic()
            self.joining_since = None
            log.info(
                "assigned %s; resuming from ledger offsets %s",
                sorted(self.assigned),
                {p: stored.get((t, p)) for t, p in sorted(msg[1])},
            )
            return {tp: stored[tp] for tp in map(tuple, msg[1]) if tp in stored}
        elif kind == "revoked":
            # every batch sent before this question has been appended: another worker resumes
            # these partitions from the offsets now in the ledger
            log.info("partitions revoked: %s", sorted(p for _, p in msg[1]))
            if self.joining_since is None and not self._stop.is_set():
                self.joining_since = time.monotonic()  # a rebalance: the group join starts
            return True
        elif kind == "broker_error":
            self.metrics.broker_errors.labels(self.config.topic).inc()
            log.warning("Kafka error (retrying; the ledger keeps the offsets): %s", msg[1])
        return None

    def _append(self, batch: Batch) -> None:
        """Append one polled batch, with its offsets, in one transaction."""
        items = batch.items()
        parsed: list[Parsed] | None = None
        if batch.packed is not None:
            parsed = [unpack(item, result) for item, result in zip(items, batch.packed, strict=True)]
        report = self.ledger.append(
            items, consumer=self.config.group, offsets=batch.offsets, parsed=parsed
        )
        self._count(report, len(items), time.monotonic() - batch.polled)
        self._update_lag(batch.lag)
        if self.on_batch is not None:
            self.on_batch(report, self.summary)

    def _count(self, report: AppendReport, consumed: int, seconds: float) -> None:
        s, m, topic = self.summary, self.metrics, self.config.topic
        s.consumed += consumed
        s.accepted += report.accepted
        s.duplicates += report.duplicates
        s.quarantined += report.quarantined
        s.held += report.held
        s.batches += 1
        s.ledger_size = report.size
        if report.checkpoint is not None:
            s.checkpoint_size = report.checkpoint.size
        m.consumed.labels(topic).inc(consumed)
        m.appended.labels(topic).inc(report.accepted)
        m.duplicates.labels(topic).inc(report.duplicates)
        m.quarantined.labels(topic).inc(report.quarantined)
        m.held.labels(topic).inc(report.held)
        m.batches.labels(topic).inc()
        m.batch_seconds.labels(topic).observe(seconds)
        m.ledger_size.set(report.size)

    def _update_lag(self, lag: dict[tuple[str, int], int]) -> None:
        for (topic, part), behind in lag.items():
            self.metrics.lag.labels(topic, str(part)).set(behind)

    def _maintain(self, idle: bool) -> None:
        """Quarantine held events whose gap never filled; checkpoint when idle and due."""
        expired = self.ledger.expire_held()
        if expired.quarantined:
            self.summary.expired += expired.quarantined
            self.summary.quarantined += expired.quarantined
            self.metrics.quarantined.labels(self.config.topic).inc(expired.quarantined)
        if idle:
            row = self.ledger.checkpoint(force=False)
            if row is not None:
                self.summary.checkpoint_size = row.size

    def _finish(self) -> None:
        row = self.ledger.checkpoint(force=True)
        if row is not None:
            self.summary.checkpoint_size = row.size
        self.summary.ledger_size = self.ledger.store.size()
        self.metrics.ledger_size.set(self.summary.ledger_size)
        log.info("worker stopped (%s): %s", self._stop_reason, self.summary.to_json())


_QUESTIONS = ("assigned", "revoked")


class _InProcess:
    """The fetcher in the worker's own process (one core): it polls when asked for a message."""

    def __init__(self, worker: IngestWorker) -> None:
        self.queue: deque[Message] = deque()
        self.fetcher = Fetcher(worker.config, self.queue.append, worker._handle, validate=False)
        try:
            self.fetcher.open()
        except BaseException:
            self.fetcher.close()
            raise

    def receive(self, timeout: float) -> Message | None:
        """The next message (polling Kafka for up to the configured poll timeout)."""
        if not self.queue:
            self.fetcher.poll_once()
        return self.queue.popleft() if self.queue else None

    def appended(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit what the ledger now holds to Kafka (informational)."""
        self.fetcher.commit(offsets)

    def close(self) -> None:
        """Leave the group."""
        self.fetcher.close()
