"""Prometheus metrics of one API app (its own registry, nothing global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Request, ingest and ledger metrics exposed on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tacho_http_requests_total", "HTTP requests by route and status",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "tacho_http_request_seconds", "HTTP request latency by route", ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.ingested = Counter(
            "tacho_ingest_events_total", "events received over HTTP/OTLP by outcome",
            ["path", "status"], registry=self.registry,
        )
        self.audited_reads = Counter(
            "tacho_audited_reads_total", "reads recorded in the ledger as audit.read platform records",
            ["action"], registry=self.registry,
        )
        self.verifications = Counter(
            "tacho_log_verifications_total", "verification rounds of the ledger: the whole ledger "
            "(kind full) or what was appended since the last one (incremental)",
            ["kind"], registry=self.registry,
        )
        self.verified_entries = Gauge(
            "tacho_log_verified_entries", "entries covered by the latest verification round",
            registry=self.registry,
        )
        self.verification_ok = Gauge(
            "tacho_log_verification_ok", "1 when the latest verification round passed, 0 when it failed",
            registry=self.registry,
        )
        self.ledger_size = Gauge(
            "tacho_ledger_entries", "entries in the ledger", registry=self.registry
        )
        self.quarantine_size = Gauge(
            "tacho_quarantine_messages", "quarantined messages", registry=self.registry
        )
