"""Errors of the replay engine and release gate.

The agent runtime's errors (models, tools, prompts, agents, budgets) are re-exported here from
``tachograph.errors``, where they are :class:`~tachograph.errors.AgentError` subclasses, not
:class:`ReplayError`: catch them by name or as ``AgentError`` (``TachographError`` catches both).
"""

from __future__ import annotations

from tachograph.errors import AgentError as AgentError
from tachograph.errors import AgentLoadError as AgentLoadError
from tachograph.errors import BudgetExceeded as BudgetExceeded
from tachograph.errors import ModelAuthError as ModelAuthError
from tachograph.errors import ModelError as ModelError
from tachograph.errors import ModelRequestError as ModelRequestError
from tachograph.errors import ModelResponseError as ModelResponseError
from tachograph.errors import ModelUnavailableError as ModelUnavailableError
from tachograph.errors import PricingError as PricingError
from tachograph.errors import PromptError as PromptError
from tachograph.errors import TachographError
from tachograph.errors import ToolFailed as ToolFailed
from tachograph.errors import UnknownModelError as UnknownModelError
from tachograph.errors import UnknownToolError as UnknownToolError


class ReplayError(TachographError):
    """Root of every error the replay area raises on purpose."""


class ReplayNotFoundError(ReplayError):
    """No stored replay report has this id."""


class GateFailed(ReplayError):
    """A replay crossed a release-gate threshold (the CLI exits non-zero)."""


class UnpricedModelError(PricingError):
    """A replay would call a model with no known price, and unpriced calls were not accepted.

    Raised before any model is called, so nothing has been spent."""


class PolicyReplayError(ReplayError):
    """A what-if policy replay cannot run: no opa binary, a candidate OPA will not load, or a
    gate threshold that is neither a count nor a rate (the message names which)."""
