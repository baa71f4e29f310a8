"""Errors of the replay area (model adapters, agent runtime, replay engine, release gate)."""

from __future__ import annotations

from domain.errors import TachographError


class ReplayError(TachographError):
    """Root of every error the replay area raises on purpose."""


class ModelError(ReplayError):
    """A model adapter could not produce a response."""


class ModelAuthError(ModelError):
    """The model endpoint refused our credentials (HTTP 401/403) or no API key is configured."""


class ModelRequestError(ModelError):
    """The model endpoint rejected the request itself (HTTP 4xx other than 401/403/429)."""


class ModelUnavailableError(ModelError):
    """The model endpoint kept failing (429, 5xx, timeouts) after every retry."""


class ModelResponseError(ModelError):
    """The model endpoint answered with something that is not a chat-completions response."""


class PricingError(ReplayError):
    """A model has no entry in the price table."""


class UnknownModelError(ReplayError):
    """No adapter is configured for a model name."""


class AgentLoadError(ReplayError):
    """An ``--agent module:function`` reference cannot be imported or is not callable."""


class PromptError(ReplayError):
    """An agent asked for a prompt that is not registered, or a prompt file cannot be read."""


class ToolFailed(ReplayError):
    """A tool call returned an error (raised into agent code, which may handle it)."""

    def __init__(self, tool: str, error: str) -> None:
        super().__init__(f"tool {tool!r} failed: {error}")
        self.tool = tool
        self.error = error


class UnknownToolError(ReplayError):
    """Agent code called a tool that is not registered."""


class BudgetExceeded(ReplayError):
    """A run went over one of its budget caps (the runtime ends it as cancelled)."""

    def __init__(self, limit: str, limit_value: object, observed: object) -> None:
        super().__init__(f"budget {limit} exceeded: {observed} > {limit_value}")
        self.limit = limit
        self.limit_value = limit_value
        self.observed = observed


class ReplayNotFoundError(ReplayError):
    """No stored replay report has this id."""


class GateFailed(ReplayError):
    """A replay crossed a release-gate threshold (the CLI exits non-zero)."""
