"""Errors raised by the ingest side: the publisher SDK, its transports and the Kafka worker."""

from __future__ import annotations

from decimal import Decimal

from domain.errors import TachographError
from tachograph.errors import DeliveryError as DeliveryError
from tachograph.errors import PublishBackpressureError as PublishBackpressureError
from tachograph.halts import Halt


class BudgetExceededError(TachographError):
    """A run crossed one of its budget caps; ``budget.exceeded`` and a cancelled
    ``run.completed`` have been recorded, and the agent must stop the run."""

    def __init__(self, run_id: str, limit: str, limit_value: Decimal, observed: Decimal) -> None:
        super().__init__(
            f"run {run_id!r} exceeded its {limit} budget: {observed} > {limit_value}"
        )
        self.run_id = run_id
        self.limit = limit
        self.limit_value = limit_value
        self.observed = observed


class RunHaltedError(TachographError):
    """A halt (kill switch) stops the run: a new run was refused, or a running one stopped at
    its next step. The run was recorded as ended ``cancelled`` with the halt (who, when, why and
    its ledger record) in its ``run.completed``, and flushed; ``event_ids`` are the run's events."""

    def __init__(self, run_id: str, halt: Halt, event_ids: list[str]) -> None:
        super().__init__(f"run {run_id!r} stopped: {halt.refusal()}")
        self.run_id = run_id
        self.halt = halt
        self.event_ids = event_ids


WorkflowHaltedError = RunHaltedError
"""The name before halts had scopes other than a workflow."""


class RunClosedError(TachographError):
    """An event was recorded on a run that is already completed (only feedback may follow)."""


class DevBrokerError(TachographError):
    """The embedded development broker (Tansu) could not be started."""


class IngestConfigError(TachographError):
    """The ingest worker was configured inconsistently (topic, bootstrap, batch size...)."""


class BrokerUnavailableError(TachographError):
    """Kafka stayed unreachable (or kept failing) for longer than the worker's broker timeout."""
