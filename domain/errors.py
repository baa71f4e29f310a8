"""The platform's errors. The root and the contract's errors are defined in ``tachograph.errors``
(the agent package) and re-exported here: one exception tree, every error a TachographError."""

from __future__ import annotations

from tachograph.errors import BackpressureError as BackpressureError
from tachograph.errors import ConfigError as ConfigError
from tachograph.errors import ConflictError as ConflictError
from tachograph.errors import ContractError as ContractError
from tachograph.errors import GapError as GapError
from tachograph.errors import RunRuleError as RunRuleError
from tachograph.errors import TachographError as TachographError


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


class StoreRetryError(StoreError):
    """A concurrent writer's failure (or a deadlock between writers) undid this transaction.

    Nothing was written; the same write can be retried at once (``Ledger`` does so itself).
    """


class VerificationError(TachographError):
    """The ledger or an evidence bundle failed verification at ``position`` for ``reason``."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"verification failed{where}: {reason}")
        self.reason = reason
        self.position = position


class NotFoundError(TachographError):
    """A run, entry, checkpoint or other named object does not exist (or is not visible)."""
