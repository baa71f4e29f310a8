"""Errors an agent process can meet: the root of Tachograph's exception tree, the contract's and
the run rules' errors, and the runtime's (budgets, halts, approvals, delivery).

The platform's own errors (proofs, signatures, stores...) live in ``domain.errors`` and derive
from the same root, so ``except TachographError`` catches everything Tachograph raises on purpose.
"""

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


class BackpressureError(TachographError):
    """A bounded buffer is full: the caller must slow down rather than wait forever."""


class ConfigError(TachographError):
    """Settings are missing, inconsistent or unsafe."""


# --- the agent runtime ------------------------------------------------------------------------
class AgentError(TachographError):
    """Root of the errors the agent runtime raises on purpose (models, tools, prompts, runs)."""


class ModelError(AgentError):
    """A model adapter could not produce a response."""


class ModelAuthError(ModelError):
    """The model endpoint refused our credentials (HTTP 401/403) or no API key is configured."""


class ModelRequestError(ModelError):
    """The model endpoint rejected the request itself (HTTP 4xx other than 401/403/429)."""


class ModelUnavailableError(ModelError):
    """The model endpoint kept failing (429, 5xx, timeouts) after every retry."""


class ModelResponseError(ModelError):
    """The model endpoint answered with something that is not a chat-completions response."""


class PricingError(AgentError):
    """A price table (or its override file) is malformed."""


class UnknownModelError(AgentError):
    """No adapter is configured for a model name."""


class AgentLoadError(AgentError):
    """An agent reference (``module:function``) cannot be imported or is not callable."""


class PromptError(AgentError):
    """An agent asked for a prompt that is not registered, or a prompt file cannot be read."""


class ToolFailed(AgentError):
    """A tool call returned an error (raised into agent code, which may handle it)."""

    def __init__(self, tool: str, error: str) -> None:
        super().__init__(f"tool {tool!r} failed: {error}")
        self.tool = tool
        self.error = error


class UnknownToolError(AgentError):
    """Agent code called a tool that is not registered."""


class BudgetExceeded(AgentError):
    """A run went over one of its budget caps (the runtime ends it ``cancelled``)."""

    def __init__(self, limit: str, limit_value: object, observed: object) -> None:
        super().__init__(f"budget {limit} exceeded: {observed} > {limit_value}")
        self.limit = limit
        self.limit_value = limit_value
        self.observed = observed


class HaltsUnavailableError(AgentError):
    """The halts could not be read (platform unreachable, key refused, bad answer); the runtime
    fails closed: no new step runs on halts it could not check."""


class ApprovalsUnavailableError(AgentError):
    """A waiting run could not read its approval's status from the platform."""


class PublishBackpressureError(BackpressureError):
    """The runtime's bounded publish buffer stayed full for ``max_block_ms``: slow down or flush."""


class DeliveryError(AgentError):
    """One or more events were not delivered (broker error, timeout, or refused by the platform).

    ``failures`` lists ``(event_id or key, reason)`` pairs.
    """

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        shown = "; ".join(f"{k}: {r}" for k, r in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} event(s) not delivered: {shown}{more}")
        self.failures = failures


# --- policies (Open Policy Agent) --------------------------------------------------------------
class PolicyError(AgentError):
    """Root of the errors met while asking the policy engine (Open Policy Agent) for a decision."""


class PolicyUnavailableError(PolicyError):
    """OPA could not be asked: unreachable, timed out, or answered with a 5xx."""


class PolicyResponseError(PolicyError):
    """OPA answered, but not with a decision we can enforce (4xx, not JSON, no or a malformed
    result); the message names what was wrong."""


class PolicyDenied(AgentError):
    """The policy engine denied an action (or a person did not approve what it gated): the tool
    call or change did not happen. Agent code may catch it and take another path; unhandled, the
    run ends ``failed`` with the reason."""

    def __init__(self, action: str, reason: str, decision: str = "deny") -> None:
        super().__init__(f"policy denied {action!r}: {reason}")
        self.action = action
        self.reason = reason
        self.decision = decision
