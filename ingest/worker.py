"""The Kafka ingest worker: poll → validate and append (with offsets, one transaction) → repeat.

Exactly once: the next offset of each partition is written by ``ledger.append`` in the same
transaction as the events it produced, and on start and on every rebalance the worker seeks
each assigned partition to the offset stored in the ledger. Kafka's committed offset is
written afterwards, for lag dashboards only; it is never read back.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from domain.ledger import AppendReport, Ledger, Packed, Parsed, unpack, validate_packed
from domain.ports import Incoming, Source
from ingest.errors import BrokerUnavailableError, IngestConfigError
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
    parallel: bool | None = None  # validate the next batch in a second process (default: >1 core)
    broker_timeout_s: float = 300.0  # give up after Kafka keeps failing this long
    consumer_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Polled:
    """One polled batch on its way into the ledger."""

    items: list[Incoming]
    offsets: dict[tuple[str, int], int]
    commits: dict[Any, Any]
    started: float
    parsed: Future[list[Packed]] | None = None


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


def _exit_with_parent(parent: int) -> None:
    """In the validation process: default signals, and exit as soon as the worker is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the worker's graceful-stop handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _make_listener(worker: IngestWorker) -> Any:
    from kafka import ConsumerRebalanceListener

    class SeekToLedger(ConsumerRebalanceListener):  # type: ignore[misc]
        """On every assignment, seek to the offsets stored in the ledger (not Kafka's)."""

        def on_partitions_revoked(self, revoked: Any) -> None:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))
            worker.drain()  # append what was polled before another worker takes over

        def on_partitions_assigned(self, assigned: Any) -> None:
            worker.seek_to_ledger(assigned)

    return SeekToLedger()


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
        self.consumer: Any = None
        self.assigned: set[int] = set()
        self._pending: _Polled | None = None
        self._pool: ProcessPoolExecutor | None = None
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

    # -- Kafka -----------------------------------------------------------------------------
    def _consumer(self) -> Any:
        from kafka import KafkaConsumer

        cfg: dict[str, Any] = {
            "bootstrap_servers": self.config.bootstrap,
            "group_id": self.config.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": self.config.batch,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            "client_id": f"tachograph-ingest-{self.config.group}",
        }
        cfg.update(self.config.consumer_config)
        return KafkaConsumer(**cfg)

    def seek_to_ledger(self, partitions: Any) -> None:
        """Position each partition at the ledger's stored next offset (or the beginning)."""
        stored = self.ledger.store.offsets(self.config.group)
        self.assigned = {tp.partition for tp in partitions}
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        log.info(
            "assigned %s; resuming from ledger offsets %s",
            sorted(self.assigned),
            {p: stored.get((self.config.topic, p)) for p in sorted(self.assigned)},
        )

    def _subscribe(self) -> None:
        from kafka import TopicPartition

        if self.config.assign:
            deadline = time.monotonic() + 30
            parts = self.consumer.partitions_for_topic(self.config.topic)
            while not parts and time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.2)
                parts = self.consumer.partitions_for_topic(self.config.topic)
            if not parts:
                raise IngestConfigError(f"topic {self.config.topic!r} has no partitions (missing?)")
            tps = [TopicPartition(self.config.topic, p) for p in sorted(parts)]
            self.consumer.assign(tps)
            self.seek_to_ledger(tps)
        else:
            self.consumer.subscribe([self.config.topic], listener=_make_listener(self))

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> WorkerSummary:
        """Consume until stopped (signal, ``stop()``) or idle for ``until_idle`` seconds."""
        t0 = time.monotonic()
        self.consumer = self._consumer()
        if self.parallel:
            self._pool = ProcessPoolExecutor(1, initializer=_exit_with_parent, initargs=(os.getpid(),))
        try:
            self._subscribe()
            last_record = last_maintenance = time.monotonic()
            while not self._stop.is_set():
                polled = self._poll()
                now = time.monotonic()
                batch = self._prepare(polled) if polled else None
                if batch is not None:
                    if self._pool is not None:
                        batch.parsed = self._pool.submit(validate_packed, [i.raw for i in batch.items])
                    self.drain()  # the previous batch, validated while this one was fetched
                    self._pending = batch
                    last_record = now
                else:
                    self.drain()
                    if self.config.until_idle is not None and now - last_record >= self.config.until_idle:
                        self.stop(f"idle {self.config.until_idle:g}s")
                if now - last_maintenance >= self.config.maintenance_every_s:
                    self._maintain(idle=batch is None)
                    last_maintenance = now
            self.drain()
            self._finish()
        finally:
            self._pending = None  # never appended: re-read from the ledger's offsets next time
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self.consumer.close(autocommit=False)
            self.summary.seconds = time.monotonic() - t0
            self.summary.stopped_by = self._stop_reason
        return self.summary

    def _poll(self) -> dict[Any, list[Any]]:
        """One poll; retriable broker errors (a restart, a lost leader) are waited out."""
        from kafka.errors import KafkaError

        failing_since: float | None = None
        while True:
            try:
                return self.consumer.poll(  # type: ignore[no-any-return]
                    timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch
                )
            except KafkaError as e:
                if not getattr(e, "retriable", False) and not isinstance(e, OSError):
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                self.metrics.broker_errors.labels(self.config.topic).inc()
                if now - failing_since > self.config.broker_timeout_s:
                    raise BrokerUnavailableError(
                        f"Kafka at {self.config.bootstrap} kept failing for "
                        f"{self.config.broker_timeout_s:g}s: {e}"
                    ) from e
                log.warning("Kafka error (retrying; the ledger keeps the offsets): %s", e)
                self.drain()  # what was polled before the error is still good
                if self._stop.wait(0.5):
                    return {}

    def _prepare(self, polled: dict[Any, list[Any]]) -> _Polled | None:
        from kafka.structs import OffsetAndMetadata

        t0 = time.perf_counter()
        items: list[Incoming] = []
        offsets: dict[tuple[str, int], int] = {}
        commits: dict[Any, Any] = {}
        for tp, records in polled.items():
            if not records:
                continue
            topic, part = tp.topic, tp.partition
            items.extend(
                Incoming(
                    r.value if r.value is not None else b"",
                    Source(kind="kafka", topic=topic, partition=part, offset=r.offset),
                )
                for r in records
            )
            nxt = records[-1].offset + 1
            offsets[(topic, part)] = nxt
            commits[tp] = OffsetAndMetadata(nxt, "", -1)
        return _Polled(items, offsets, commits, t0) if items else None

    def drain(self) -> None:
        """Append the polled batch, if any, with its offsets in the same transaction."""
        batch, self._pending = self._pending, None
        if batch is None:
            return
        parsed: list[Parsed] | None = None
        if batch.parsed is not None:
            parsed = [
                unpack(item, result)
                for item, result in zip(batch.items, batch.parsed.result(), strict=True)
            ]
        report = self.ledger.append(
            batch.items, consumer=self.config.group, offsets=batch.offsets, parsed=parsed
        )
        self._count(report, len(batch.items), time.perf_counter() - batch.started)
        self._commit_informational(batch.commits)
        self._update_lag()
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

    def _commit_informational(self, commits: dict[Any, Any]) -> None:
        from kafka.errors import KafkaError

        if self.config.assign and not self.config.group:
            return
        try:
            self.consumer.commit_async(commits)
        except KafkaError as e:  # informational only: the ledger holds the real offsets
            log.warning("informational Kafka offset commit failed: %s", e)

    def _update_lag(self) -> None:
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            pos = self.consumer.position(tp, timeout_ms=0) if high is not None else None
            if high is not None and pos is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))

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
