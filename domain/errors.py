"""The one exception tree of Tachograph: every error we raise on purpose is a TachographError."""

from __future__ import annotations


class TachographError(Exception):
    """Root of every error Tachograph raises on purpose."""


class ContractError(TachographError):
    """An event does not satisfy the public event contract (schema, types, ranges).

    ``problems`` lists one ``(field path, rule)`` pair per violation.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class RunRuleError(TachographError):
    """An event is well-formed but breaks a run rule (order, references, completion)."""


class ConflictError(RunRuleError):
    """An event reuses a stored ``seq`` or ``event_id`` with different content."""


class GapError(RunRuleError):
    """An event arrived ahead of its run's next expected ``seq`` and the gap never filled."""


class ProofError(TachographError):
    """A Merkle inclusion or consistency proof does not verify."""


class SignatureError(TachographError):
    """A signed note is malformed or carries no valid signature from a trusted key."""


class CheckpointError(TachographError):
    """A checkpoint text is malformed or contradicts the log."""


class StoreError(TachographError):
    """A ledger store failed (driver error translated at the edge)."""


class StoreIntegrityError(StoreError):
    """A store write broke a uniqueness or integrity constraint."""


class BackpressureError(TachographError):
    """A bounded buffer is full: the caller must slow down rather than wait forever."""


class VerificationError(TachographError):
    """The ledger or an evidence bundle failed verification at ``position`` for ``reason``."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"verification failed{where}: {reason}")
        self.reason = reason
        self.position = position


class NotFoundError(TachographError):
    """A run, entry, checkpoint or other named object does not exist (or is not visible)."""


class ConfigError(TachographError):
    """Settings are missing, inconsistent or unsafe."""
