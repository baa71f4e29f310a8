"""An agent for the replay tests, importable by its entry point
``tests.integration.replay_agents:lookup`` (a test module's own name is not a package path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tachograph.context import Context
from tachograph.tools import ToolRegistry

WORKFLOW = "order-lookup"
AGENT = {"id": "lookup-agent", "version": "1.2.0"}
TOOLS = ToolRegistry()
TOOLS.register("orders.get", lambda args: {"order": args["order"], "state": "shipped"}, "read")


def lookup(ctx: Context, input: Mapping[str, Any]) -> dict[str, Any]:
    """Look an order up and summarise it."""
    order = ctx.tool("orders.get", {"order": input["order"]})
    return {"summary": ctx.llm(f"Summarise order {order['order']}: {order['state']}").content}
