"""Where the publisher SDK sends events: Kafka, or straight into a ledger in-process.

A :class:`Transport` takes canonical event bytes keyed by run id. ``KafkaTransport`` publishes
with kafka-python's idempotent producer behind a bounded buffer; ``LedgerTransport`` appends to
a :class:`~domain.ledger.Ledger` through the same validate-and-append path as the worker (the
replay runtime and tests use it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from domain.ledger import Ledger
from domain.ports import Incoming, Source
from ingest.errors import DeliveryError, IngestConfigError, PublishBackpressureError

log = logging.getLogger(__name__)

ErrorCallback = Callable[[str, str], None]


@runtime_checkable
class Transport(Protocol):
    """Carries event bytes (keyed by run id) from the SDK to the ledger."""

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Queue one event; raise a BackpressureError rather than block forever."""

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued event is delivered; raise DeliveryError for failures."""

    def close(self, timeout: float | None = None) -> None:
        """Flush and release resources."""


@dataclass(frozen=True)
class Delivered:
    """A Kafka acknowledgement of one event."""

    event_id: str
    topic: str
    partition: int
    offset: int


class KafkaTransport:
    """Idempotent kafka-python producer (acks=all, key = run id) behind a bounded buffer.

    The buffer is bounded by ``max_in_flight`` unacknowledged events and ``buffer_memory``
    unacknowledged bytes; a send that cannot get room within ``max_block_ms`` raises
    :class:`PublishBackpressureError`. Delivery failures are passed to ``on_error`` and raised
    as one :class:`DeliveryError` from the next :meth:`flush`.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        max_in_flight: int = 10_000,
        buffer_memory: int = 32 * 1024 * 1024,
        max_block_ms: int = 10_000,
        delivery_timeout_ms: int = 30_000,
        linger_ms: int = 5,
        on_error: ErrorCallback | None = None,
        on_delivery: Callable[[Delivered], None] | None = None,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaConfigurationError, KafkaError

        self.topic = topic
        self.max_in_flight = max_in_flight
        self.buffer_memory = buffer_memory
        self.max_block_ms = max_block_ms
        self.on_error = on_error
        self.on_delivery = on_delivery
        self._cond = threading.Condition()
        self._pending = 0
        self._pending_bytes = 0
        self._failures: list[tuple[str, str]] = []
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": linger_ms,
            "max_block_ms": max_block_ms,
            "delivery_timeout_ms": delivery_timeout_ms,
            "request_timeout_ms": min(30_000, max(1_000, delivery_timeout_ms // 2 - linger_ms)),
            "max_request_size": 2 * 1024 * 1024,
            "batch_size": 256 * 1024,
            "client_id": "tachograph-sdk",
        }
        config.update(producer_config or {})
        try:
            self.producer = KafkaProducer(**config)
        except KafkaConfigurationError as e:
            raise IngestConfigError(f"invalid Kafka producer settings: {e}") from e
        except KafkaError as e:
            raise DeliveryError([("(connect)", f"cannot reach Kafka at {bootstrap}: {e}")]) from e

    # -- Transport -------------------------------------------------------------------------
    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Publish one event (non-blocking unless the bounded buffer is full)."""
        from kafka.errors import KafkaError, KafkaTimeoutError

        size = len(value)
        self._reserve(size)
        try:
            future = self.producer.send(self.topic, key=key.encode(), value=value)
        except KafkaTimeoutError as e:
            self._release(size)
            raise PublishBackpressureError(
                f"Kafka did not accept event {event_id!r} within max_block_ms={self.max_block_ms} "
                f"(broker unreachable or buffer full): {e}"
            ) from e
        except KafkaError as e:
            self._release(size)
            raise DeliveryError([(event_id, f"{type(e).__name__}: {e}")]) from e
        future.add_callback(self._ok, event_id, size)
        future.add_errback(self._failed, event_id, size)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every in-flight event; raise DeliveryError if any failed since last flush."""
        from kafka.errors import KafkaError

        wait = timeout if timeout is not None else self.max_block_ms / 1000 + 30
        deadline = time.monotonic() + wait
        try:
            self.producer.flush(timeout=wait)
        except KafkaError as e:  # e.g. a batch split after MessageSizeTooLarge; callbacks tell
            log.info("producer flush: %s; waiting for per-event callbacks", e)
        with self._cond:  # callbacks run on the producer's thread right after the acks
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(0.05)
            failures, self._failures = self._failures, []
            if self._pending:
                failures.append(
                    ("(flush)", f"{self._pending} event(s) not acknowledged within {wait:g}s")
                )
        if failures:
            raise DeliveryError(failures)

    def close(self, timeout: float | None = None) -> None:
        """Flush, then close the producer (raises DeliveryError for undelivered events)."""
        try:
            self.flush(timeout)
        finally:
            self.producer.close(timeout=timeout if timeout is not None else 10)

    @property
    def in_flight(self) -> int:
        """Events sent but not yet acknowledged."""
        return self._pending

    # -- bounded buffer --------------------------------------------------------------------
    def _reserve(self, size: int) -> None:
        deadline = time.monotonic() + self.max_block_ms / 1000
        with self._cond:
            while self._pending and (
                self._pending >= self.max_in_flight
                or self._pending_bytes + size > self.buffer_memory
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PublishBackpressureError(
                        f"publish buffer full for {self.max_block_ms} ms "
                        f"({self._pending} events / {self._pending_bytes} bytes in flight; "
                        f"limits {self.max_in_flight} events / {self.buffer_memory} bytes)"
                    )
                self._cond.wait(left)
            self._pending += 1
            self._pending_bytes += size

    def _release(self, size: int) -> None:
        with self._cond:
            self._pending -= 1
            self._pending_bytes -= size
            self._cond.notify_all()

    def _ok(self, event_id: str, size: int, md: Any) -> None:
        try:
            if self.on_delivery is not None:
                self.on_delivery(Delivered(event_id, md.topic, md.partition, md.offset))
        finally:
            self._release(size)

    def _failed(self, event_id: str, size: int, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("event %s not delivered: %s", event_id, reason)
        try:
            with self._cond:
                self._failures.append((event_id, reason))
            if self.on_error is not None:
                self.on_error(event_id, reason)
        finally:
            self._release(size)


class LedgerTransport:
    """Appends events straight to a ledger (in-process; for replay, tests and embedded use).

    Events are buffered up to ``batch_size`` and appended in one transaction; a quarantined
    event is reported as a :class:`DeliveryError` (with the ledger's reason) on flush.
    """

    def __init__(self, ledger: Ledger, *, batch_size: int = 1, name: str = "sdk") -> None:
        self.ledger = ledger
        self.batch_size = batch_size
        self.name = name
        self._buffer: list[tuple[str, Incoming]] = []
        self._failures: list[tuple[str, str]] = []
        self.accepted = 0
        self.duplicates = 0

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Buffer one event; append the buffer when it reaches ``batch_size``."""
        self._buffer.append((event_id, Incoming(value, Source(kind="sdk", name=self.name))))
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


class CollectingTransport:
    """Keeps sent events in memory (inspecting what an agent would publish; dry runs)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Keep the event."""
        self.sent.append((key, event_id, value))

    def flush(self, timeout: float | None = None) -> None:
        """Nothing to wait for."""

    def close(self, timeout: float | None = None) -> None:
        """Nothing to release."""

    def values(self) -> Sequence[bytes]:
        """The event bytes in send order."""
        return [v for _, _, v in self.sent]
