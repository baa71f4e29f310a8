"""Agent services for the Kafka ingest tests: an agent run through the agent runtime over
``kafka://`` (one idempotent producer per service), whose runs vary with their input: model
calls, tool timeouts (handled or not), policy checks, changes and budget breaches."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tachograph
from tachograph.agents import AgentSpec
from tachograph.errors import ToolFailed
from tachograph.runtime import Budget, RunResult
from tachograph.tools import ToolRegistry

SERVICES = (("ticket-triage-sim", "triage-sim"), ("invoice-matching-sim", "ap-sim"), ("access-review-sim", "iam-sim"))
"""(workflow, agent id) of each service: names of their own, never the example agents'."""


def _lookup(args: Mapping[str, Any]) -> dict[str, Any]:
    if args["fails"]:
        raise TimeoutError(f"lookup {args['id']} timed out")
    return {"rows": args["id"] % 6}


TOOLS = ToolRegistry()
TOOLS.register("records.lookup", _lookup, "read")
TOOLS.register("records.update", lambda args: {"updated": args["id"]}, "write")


def service_agent(ctx: tachograph.Context, input: dict[str, Any]) -> dict[str, Any]:
    """Steps as the input says: think, read (a failing read is given up on, or not), write."""
    for step in input["steps"]:
        ctx.llm(f"{ctx.spec.workflow} step {step['n']}")
        if step["kind"] == "read":
            try:
                ctx.tool("records.lookup", {"id": step["id"], "fails": step["fails"]})
            except ToolFailed:
                if step["give_up"]:
                    raise
        else:
            decision = ctx.policy("writes", "records.update", step["decision"], "by the rules")
            if decision == "allow":
                change = ctx.propose_change(f"record/{step['id']}", {"v": 0}, {"v": step["id"]})
                ctx.tool("records.update", {"id": step["id"]})
                ctx.apply_change(change)
    if input["escalate"]:
        return {"outcome": "escalated", "why": "low confidence"}
    return {"resolved": True}


def _input(rng: random.Random) -> dict[str, Any]:
    steps = []
    for n in range(rng.randrange(2, 7)):
        if rng.random() < 0.35:
            steps.append({"n": n, "kind": "write", "id": rng.randrange(1000),
                          "decision": rng.choices(["allow", "deny"], [3, 1])[0]})
        else:
            steps.append({"n": n, "kind": "read", "id": rng.randrange(1000), "fails": rng.random() < 0.1,
                          "give_up": rng.random() < 0.5})
    return {"steps": steps, "escalate": rng.random() < 0.1}


@dataclass
class Published:
    """What the services published."""

    runs: int = 0
    events: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    budget_exceeded: Counter[str] = field(default_factory=Counter)
    event_ids: list[str] = field(default_factory=list)

    def add(self, result: RunResult) -> None:
        """Count one run."""
        self.runs += 1
        self.events += len(result.events)
        self.outcomes[result.outcome] += 1
        self.event_ids += [e["event_id"] for e in result.events]
        for e in result.events:
            if e["type"] == "budget.exceeded":
                self.budget_exceeded[e["data"]["limit"]] += 1


def publish_agent_runs(bootstrap: str, topic: str, runs: int, seed: int = 7, workspace: str = "acme") -> Published:
    """Run ``runs`` runs, round robin over three services, each its own runtime and producer;
    about one run in seven gets a budget of three model calls."""
    rng = random.Random(seed)
    published = Published()
    runtimes = [tachograph.connect(f"kafka://{bootstrap}/{topic}", workspace=workspace, env={}, model="sim-small-v1")
                for _ in SERVICES]
    try:
        for n in range(runs):
            workflow, agent_id = SERVICES[n % len(SERVICES)]
            spec = AgentSpec(ref="tests.integration.runtime_agents:service_agent", fn=service_agent, tools=TOOLS,
                             prompts={}, workflow=workflow, identity={"id": agent_id, "version": "1.0.0"})
            budget = Budget(max_model_calls=3) if rng.random() < 0.15 else Budget(max_model_calls=8)
            published.add(runtimes[n % len(runtimes)].run(spec, _input(rng), run_id=f"s{seed}-{n:05d}",
                                                          budget=budget))
    finally:
        for rt in runtimes:
            rt.close()
    return published
