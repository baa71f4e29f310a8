"""Where the agent runtime sends a run's events: Kafka, HTTP, or (with the platform installed)
the embedded ledger.

A :class:`Transport` takes canonical event bytes keyed by run id and sends them as they come,
through a bounded buffer; :meth:`Transport.flush` waits until the platform has every one.
``KafkaTransport`` publishes with kafka-python's idempotent producer (acks=all, key = run id);
``HttpTransport`` posts to ``POST /v1/events`` with a publisher key from a sender thread. The
embedded transport appends to a ledger in-process; it lives with the ledger code
(``ingest/embedded.py``) and is found through the ``tachograph.transports`` entry point, so an
agent process that only installed ``tachograph-agent`` never imports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tachograph.errors import ConfigError, DeliveryError, PublishBackpressureError

log = logging.getLogger(__name__)

ErrorCallback = Callable[[str, str], None]


@runtime_checkable
class Transport(Protocol):
    """Carries event bytes (keyed by run id) from the agent runtime to the platform."""

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
            "client_id": "tachograph-agent",
        }
        config.update(producer_config or {})
        try:
            self.producer = KafkaProducer(**config)
        except KafkaConfigurationError as e:
            raise ConfigError(f"invalid Kafka producer settings: {e}") from e
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


Deliver = Callable[[Sequence[tuple[str, bytes]]], list[tuple[str, str]]]
"""Delivers a batch of ``(event_id, bytes)`` in order; returns ``(event_id, reason)`` failures."""


class BufferedSender:
    """A bounded queue drained by one sender thread: events leave as they come, in order.

    ``send`` blocks while ``max_events`` or ``max_bytes`` are queued and raises
    :class:`PublishBackpressureError` after ``max_block_s``; ``flush`` waits until the thread has
    delivered everything queued and raises one :class:`DeliveryError` for what failed since the
    last flush. A crash loses at most what is queued and not yet delivered.
    """

    def __init__(self, deliver: Deliver, *, max_events: int = 10_000, max_bytes: int = 32 << 20,
                 max_batch: int = 500, max_block_s: float = 10.0, name: str = "tachograph-sender") -> None:
        self._deliver = deliver
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self.max_block_s = max_block_s
        self._cond = threading.Condition()
        self._queue: list[tuple[str, bytes]] = []
        self._queued_bytes = 0
        self._busy = 0  # events taken by the thread and not yet delivered
        self._failures: list[tuple[str, str]] = []
        self._closed = False
        self.delivered = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def send(self, event_id: str, value: bytes) -> None:
        """Queue one event (blocks while the buffer is full, up to ``max_block_s``)."""
        deadline = time.monotonic() + self.max_block_s
        with self._cond:
            if self._closed:
                raise DeliveryError([(event_id, "the transport is closed")])
            while self._queue and (len(self._queue) >= self.max_events
                                   or self._queued_bytes + len(value) > self.max_bytes):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PublishBackpressureError(
                        f"publish buffer full for {self.max_block_s:g} s ({len(self._queue)} events / "
                        f"{self._queued_bytes} bytes queued; limits {self.max_events} events / "
                        f"{self.max_bytes} bytes): the platform is not taking events")
                self._cond.wait(left)
            self._queue.append((event_id, value))
            self._queued_bytes += len(value)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued event is delivered; raise DeliveryError for failures."""
        deadline = time.monotonic() + (timeout if timeout is not None else 60.0)
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            failures, self._failures = self._failures, []
            waiting = len(self._queue) + self._busy
        if waiting:
            failures.append(("(flush)", f"{waiting} event(s) not delivered within the flush timeout"))
        if failures:
            raise DeliveryError(failures)

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the sender thread."""
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(5)

    @property
    def queued(self) -> int:
        """Events not yet delivered (what a crash now would lose)."""
        with self._cond:
            return len(self._queue) + self._busy

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                batch = self._queue[: self.max_batch]
                del self._queue[: len(batch)]
                self._queued_bytes -= sum(len(v) for _, v in batch)
                self._busy = len(batch)
                self._cond.notify_all()
            try:
                failures = self._deliver(batch)
            except Exception as e:  # a delivery bug must not kill the thread silently
                failures = [(event_id, f"{type(e).__name__}: {e}") for event_id, _ in batch]
            with self._cond:
                self._failures.extend(failures)
                self.delivered += len(batch) - len(failures)
                self._busy = 0
                self._cond.notify_all()


HTTP_OK = frozenset({"accepted", "duplicate", "held"})
"""Item statuses of ``POST /v1/events`` that mean the platform has the event (``held``: kept
until the gap before it fills)."""


class HttpTransport:
    """Posts events to ``POST /v1/events`` with a publisher key, from a sender thread.

    Events are posted as they come (what queued while a request was in flight goes in the next
    one, up to ``max_batch``). A request that fails for the network or a 5xx/429 is retried with
    backoff for ``retry_s``; an item the platform did not take (quarantined, rejected) is a
    DeliveryError on the next flush, with the platform's reason.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0, retry_s: float = 30.0,
                 max_events: int = 10_000, max_bytes: int = 32 << 20, max_batch: int = 500,
                 max_block_s: float = 10.0, client: Any = None) -> None:
        import httpx

        self._httpx = httpx
        self.retry_s = retry_s
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._sender = BufferedSender(self._post, max_events=max_events, max_bytes=max_bytes,
                                      max_batch=max_batch, max_block_s=max_block_s,
                                      name="tachograph-http-sender")

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Queue one event for the sender thread."""
        self._sender.send(event_id, value)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the platform has every queued event."""
        self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the sender, close the connection pool."""
        try:
            self._sender.close(timeout)
        finally:
            self._client.close()

    @property
    def queued(self) -> int:
        """Events not yet delivered."""
        return self._sender.queued

    def _post(self, batch: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
        body = b"[" + b",".join(value for _, value in batch) + b"]"
        deadline = time.monotonic() + self.retry_s
        delay = 0.1
        while True:
            try:
                resp = self._client.post("/v1/events", content=body, headers=self._headers)
            except self._httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    break
                why = f"POST /v1/events answered {resp.status_code}: {resp.text[:300]}"
                if resp.status_code < 500 and resp.status_code != 429:
                    return [(event_id, why) for event_id, _ in batch]
            if time.monotonic() + delay > deadline:
                return [(event_id, why) for event_id, _ in batch]
            log.info("POST /v1/events failed (%s); retrying in %.1f s", why, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        failures: list[tuple[str, str]] = []
        for (event_id, _), item in zip(batch, resp.json()["results"], strict=True):
            if item["status"] not in HTTP_OK:
                failures.append((event_id, f"{item['status']}: {item.get('reason')}"))
        return failures
