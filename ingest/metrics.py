"""Prometheus metrics of an ingest worker: consumed, appended, duplicates, quarantined, lag, latency."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    """The worker's metrics in their own registry (several workers can live in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "tacho_ingest_consumed", "Kafka records consumed", ["topic"], registry=r
        )
        self.appended = Counter(
            "tacho_ingest_appended", "events accepted into the ledger", ["topic"], registry=r
        )
        self.duplicates = Counter(
            "tacho_ingest_duplicates", "identical re-deliveries absorbed", ["topic"], registry=r
        )
        self.quarantined = Counter(
            "tacho_ingest_quarantined", "messages quarantined with a reason", ["topic"], registry=r
        )
        self.held = Counter(
            "tacho_ingest_held", "events held waiting for a seq gap to fill", ["topic"], registry=r
        )
        self.batches = Counter(
            "tacho_ingest_batches", "ledger append transactions", ["topic"], registry=r
        )
        self.broker_errors = Counter(
            "tacho_ingest_broker_errors", "retriable Kafka errors waited out", ["topic"], registry=r
        )
        self.lag = Gauge(
            "tacho_ingest_lag", "records behind the partition's high watermark",
            ["topic", "partition"], registry=r,
        )
        self.ledger_size = Gauge("tacho_ledger_size", "entries in the ledger", registry=r)
        self.batch_seconds = Histogram(
            "tacho_ingest_batch_seconds", "seconds to validate and append one batch",
            ["topic"], buckets=BATCH_BUCKETS, registry=r,
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Expose ``/metrics`` over HTTP on ``port``; returns the server (call ``shutdown()``)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server

    def text(self) -> bytes:
        """The metrics in Prometheus text format."""
        return prometheus_text(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of one sample (e.g. ``value("tacho_ingest_appended_total", topic=t)``)."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got


def prometheus_text(registry: CollectorRegistry) -> bytes:
    """Prometheus text exposition of a registry (for an API route to return as-is)."""
    return generate_latest(registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST
