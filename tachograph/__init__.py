"""Tachograph's agent runtime: record agent runs as they happen, within budgets, under the
platform's kill switches and people's approvals.

    import tachograph

    TOOLS = tachograph.ToolRegistry()
    WORKFLOW = "ticket-triage"
    AGENT = {"id": "triage-agent", "version": "3.0.0"}

    def triage(ctx: tachograph.Context, input: dict) -> dict:
        reply = ctx.llm("Classify: " + input["text"])
        return {"category": reply.content}

    with tachograph.connect("http://localhost:8000", api_key="...") as rt:
        rt.run(triage, {"text": "I was charged twice"}, budget=tachograph.Budget(deadline_s=30))

See docs/agents.md. Names are loaded on first use, so the platform's own use of the event
contract (``tachograph.contract``) does not load the runtime.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Budget": "tachograph.runtime",
    "Runtime": "tachograph.runtime",
    "RunResult": "tachograph.runtime",
    "connect": "tachograph.runtime",
    "Context": "tachograph.context",
    "Reply": "tachograph.context",
    "ToolRegistry": "tachograph.tools",
    "AgentSpec": "tachograph.agents",
    "load_agent": "tachograph.agents",
    "ModelRegistry": "tachograph.models",
    "PriceTable": "tachograph.prices",
    "HttpModelConfig": "tachograph.models",
    "KafkaTransport": "tachograph.transports",
    "HttpTransport": "tachograph.transports",
    "HttpPlatform": "tachograph.platform",
    "TachographError": "tachograph.errors",
    "AgentError": "tachograph.errors",
    "ConfigError": "tachograph.errors",
    "ContractError": "tachograph.errors",
    "RunRuleError": "tachograph.errors",
    "ToolFailed": "tachograph.errors",
    "BudgetExceeded": "tachograph.errors",
    "DeliveryError": "tachograph.errors",
    "PublishBackpressureError": "tachograph.errors",
    "HaltsUnavailableError": "tachograph.errors",
    "ModelError": "tachograph.errors",
    "PolicyDenied": "tachograph.errors",
}

__all__ = [
    "AgentError",
    "AgentSpec",
    "Budget",
    "BudgetExceeded",
    "ConfigError",
    "Context",
    "ContractError",
    "DeliveryError",
    "HaltsUnavailableError",
    "HttpModelConfig",
    "HttpPlatform",
    "HttpTransport",
    "KafkaTransport",
    "ModelError",
    "ModelRegistry",
    "PolicyDenied",
    "PriceTable",
    "PublishBackpressureError",
    "Reply",
    "RunResult",
    "RunRuleError",
    "Runtime",
    "TachographError",
    "ToolFailed",
    "ToolRegistry",
    "connect",
    "load_agent",
]

if TYPE_CHECKING:
    from tachograph.agents import AgentSpec, load_agent
    from tachograph.context import Context, Reply
    from tachograph.errors import (
        AgentError,
        BudgetExceeded,
        ConfigError,
        ContractError,
        DeliveryError,
        HaltsUnavailableError,
        ModelError,
        PolicyDenied,
        PublishBackpressureError,
        RunRuleError,
        TachographError,
        ToolFailed,
    )
    from tachograph.models import HttpModelConfig, ModelRegistry
    from tachograph.platform import HttpPlatform
    from tachograph.prices import PriceTable
    from tachograph.runtime import Budget, RunResult, Runtime, connect
    from tachograph.tools import ToolRegistry
    from tachograph.transports import HttpTransport, KafkaTransport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tachograph' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
