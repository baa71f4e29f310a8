"""Errors raised by the ingest side: the Kafka worker and the development broker (the agent
runtime's delivery errors live in ``tachograph.errors`` and are re-exported here)."""

from __future__ import annotations

from domain.errors import TachographError
from tachograph.errors import DeliveryError as DeliveryError
from tachograph.errors import PublishBackpressureError as PublishBackpressureError


class DevBrokerError(TachographError):
    """The embedded development broker (Tansu) could not be started."""


class IngestConfigError(TachographError):
    """The ingest worker was configured inconsistently (topic, bootstrap, batch size...)."""


class BrokerUnavailableError(TachographError):
    """Kafka stayed unreachable (or kept failing) for longer than the worker's broker timeout."""


class NoPartitionsError(TachographError):
    """The worker's consumer group join did not complete within its join timeout, so it holds no
    partitions and would ingest nothing."""
