"""The first stage of ``tacho demo``: the example agents run through the agent runtime.

``examples.triage:triage`` and ``examples.invoices:match_invoice`` run on their example inputs
through :mod:`tachograph`'s runtime. With ``via="kafka"`` their events go over Kafka (the embedded
dev broker unless one is configured) and ``tacho ingest``'s worker appends them to the ledger;
with ``via="embedded"`` the runtime appends them in-process. Either way halts and approvals come
from ``tacho serve`` running in this process; an agent that asks for approval waits until Pat
Approver decides through ``POST /v1/approvals/{id}/decision``; the first such run is shown with
its console link while it waits.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

import tachograph
from api import demo_policy
from api.console.demo import CONSOLE_URL
from api.demo_platform import (
    ApprovalTap,
    DemoPlatformError,
    InProcessServer,
    Person,
    create_stage_keys,
    revoke_stage_keys,
)
from api.settings import Settings
from domain.errors import ConfigError
from domain.ledger import Ledger
from ingest.demo import DemoIngestError, KafkaLeg, print_worker
from tachograph.agents import AgentSpec, load_agent
from tachograph.policy import OpaClient
from tachograph.runtime import Budget, RunResult, Runtime

EXAMPLES = ("examples.triage:triage", "examples.invoices:match_invoice")
WORKSPACE = "demo"
MODEL = "sim-small-v1"
BUDGET = Budget(max_model_calls=4, max_cost_usd="0.01", deadline_s=120)
TIGHT = Budget(max_model_calls=1, max_cost_usd="0.01", deadline_s=120)
"""Every fifth run of each agent gets a budget of one model call (a triage reply breaches it)."""
FEEDBACK_BY = "Carol (customer success)"
VIAS = ("kafka", "embedded")
APPROVAL_WAIT_S = 60.0
"""How long a demo agent waits for Pat Approver before its approval counts as expired."""


@dataclass
class WorkflowRuns:
    """What one example agent's runs did."""

    runs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    approvals: Counter[str] = field(default_factory=Counter)  # requested, approved, rejected
    budget_exceeded: Counter[str] = field(default_factory=Counter)
    halted: int = 0
    feedback: int = 0
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, result: RunResult) -> None:
        """Count one finished run."""
        self.runs += 1
        self.outcomes[result.outcome] += 1
        self.halted += result.halted
        self.tokens += result.usage.tokens
        self.cost_usd += result.usage.cost_usd
        for event in result.events:
            if event["type"] == "approval.requested":
                self.approvals["requested"] += 1
            elif event["type"] == "approval.decided":
                self.approvals[event["data"]["decision"]] += 1
            elif event["type"] == "budget.exceeded":
                self.budget_exceeded[event["data"]["limit"]] += 1

    def to_json(self) -> dict[str, Any]:
        """Counts as JSON (money as a decimal string)."""
        return {"runs": self.runs, "outcomes": dict(self.outcomes), "approvals": dict(self.approvals),
                "budget_exceeded": dict(self.budget_exceeded), "halted": self.halted,
                "feedback": self.feedback, "tokens": self.tokens, "cost_usd": str(self.cost_usd)}


@dataclass
class AgentRuns:
    """The example agents' runs: each run's event count, and counts by workflow."""

    events: dict[str, int] = field(default_factory=dict)  # run id -> events sent
    workflows: dict[str, WorkflowRuns] = field(default_factory=dict)
    spotlight: RunResult | None = None
    policy: Counter[tuple[str, str]] = field(default_factory=Counter)  # (revision, decision) -> n

    def to_json(self) -> dict[str, Any]:
        """Run ids and counts as JSON."""
        return {"runs": len(self.events), "events": sum(self.events.values()), "run_ids": list(self.events),
                "by_workflow": {w: r.to_json() for w, r in self.workflows.items()}}


def _plan(runs: int, stamp: str) -> Iterator[tuple[AgentSpec, int, dict[str, Any]]]:
    """``runs`` runs split between the example agents, interleaved, on their example inputs."""
    agents = [load_agent(ref) for ref in EXAMPLES]
    counts = [runs // len(agents) + (i < runs % len(agents)) for i in range(len(agents))]
    inputs = [__import__(a.ref.split(":")[0], fromlist=["inputs"]).inputs(n, salt=stamp)
              for a, n in zip(agents, counts, strict=True)]
    for i in range(max(counts, default=0)):
        for agent, given in zip(agents, inputs, strict=True):
            if i < len(given):
                yield agent, i, given[i]


def run_examples(rt: Runtime, runs: int, stamp: str, person: Person, out: Console,
                 healthy: Callable[[], None] = lambda: None) -> AgentRuns:
    """Run the example agents ``runs`` times through ``rt``; every fourth succeeded run gets a
    person's feedback (one in eight not accepted). Says how the spotlight run ended when it does.
    ``healthy`` raises when the platform side broke (then no further run starts)."""
    done = AgentRuns()
    for agent, i, given in _plan(runs, stamp):
        healthy()
        workflow = agent.workflow or agent.ref
        tight = i % 5 == 4
        result = rt.run(agent, given, run_id=f"{workflow}-{stamp}-{i:03d}", budget=TIGHT if tight else BUDGET,
                        labels={"route": f"simulated/{MODEL}", "budget": "tight" if tight else "normal"})
        counts = done.workflows.setdefault(workflow, WorkflowRuns())
        counts.add(result)
        done.policy.update(demo_policy.decisions(result.events))
        done.events[result.run_id] = len(result.events)
        if result.outcome == "succeeded" and i % 4 == 0:
            result.feedback(accepted=i % 8 != 0, by=FEEDBACK_BY)
            counts.feedback += 1
            done.events[result.run_id] += 1
        if done.spotlight is None and person.first_run_id == result.run_id:
            done.spotlight = result
            _went_on(result, person, out)
    return done


def _went_on(result: RunResult, person: Person, out: Console) -> None:
    person.spotlight_decided.wait(30)
    decided = person.spotlight
    if decided is not None and decided.run_id == result.run_id:
        out.print(f"  the waiting agent went on: run {result.run_id} {result.outcome} "
                  f"({decided.decision} by {decided.decided_by}, "
                  f"{decided.decided_at - decided.asked_at:.1f}s after it asked)")
        out.print(f"  later: `tacho serve`, then {CONSOLE_URL}runs/{result.run_id}", soft_wrap=True, markup=False)


def _money(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def print_runs(done: AgentRuns, out: Console) -> None:
    """The headline table: the example agents' runs, one column per workflow."""
    flows = list(done.workflows.values())
    t = Table(title="the example agents' runs (through the agent runtime)", show_edge=False)
    t.add_column("")
    for workflow in done.workflows:
        t.add_column(workflow, justify="right")
    t.add_row("runs", *(str(r.runs) for r in flows))
    for outcome in ("succeeded", "escalated", "failed", "cancelled"):
        t.add_row(outcome, *(str(r.outcomes[outcome]) for r in flows))
    t.add_row("approvals asked", *(str(r.approvals["requested"]) for r in flows))
    t.add_row("  approved / rejected", *(f"{r.approvals['approved']} / {r.approvals['rejected']}" for r in flows))
    t.add_row("budget breaches", *(", ".join(f"{k} {v}" for k, v in sorted(r.budget_exceeded.items())) or "0"
                                  for r in flows))
    t.add_row("halted", *(str(r.halted) for r in flows))
    t.add_row("feedback", *(str(r.feedback) for r in flows))
    t.add_row("tokens", *(f"{r.tokens:,}" for r in flows))
    t.add_row("cost (USD)", *(_money(r.cost_usd) for r in flows))
    out.print(t)


def _spotlight(done: AgentRuns, person: Person) -> dict[str, Any] | None:
    decided, result = person.spotlight, done.spotlight
    if decided is None or result is None:
        return None
    return {**decided.to_json(), "outcome": result.outcome}


def _healthy(person: Person, leg: KafkaLeg | None) -> None:
    if person.error is not None:
        raise DemoPlatformError(f"the demo's approver failed: {person.error}") from person.error
    if leg is not None and not leg.alive:
        raise DemoIngestError("the demo's ingest worker stopped while the agents ran")


@contextmanager
def _runtime(via: str, settings: Settings, ledger: Ledger, api_url: str, key: str,
             out: Console, policy: OpaClient | None) -> Iterator[tuple[Runtime, KafkaLeg | None]]:
    """The agents' runtime for ``via`` (asking ``policy`` before every action, when given), and
    the Kafka leg (None when embedded)."""
    if via == "embedded":
        from ingest.embedded import embedded_runtime

        with embedded_runtime(ledger, WORKSPACE, name="tacho demo", model=MODEL,
                              approval_timeout_s=APPROVAL_WAIT_S, policy=policy) as rt:
            yield rt, None
        return
    with KafkaLeg(settings, ledger, out) as leg, tachograph.connect(
        leg.url, workspace=WORKSPACE, api_key=key, api_url=api_url, env={}, model=MODEL,
        approval_timeout_s=APPROVAL_WAIT_S, policy=policy,
    ) as rt:
        yield rt, leg


def agents_stage(settings: Settings, ledger: Ledger, runs: int, via: str, out: Console) -> dict[str, Any]:
    """Run the example agents through the runtime over ``via`` (kafka or embedded) under the
    demo's policy (OPA decides; without opa, with no policy engine), a person deciding their
    approvals through the API. Returns what ran, was decided and was ingested."""
    if via not in VIAS:
        raise ConfigError(f"--via must be {' or '.join(VIAS)}, not {via!r}")
    stamp = f"{int(time.time()):x}"
    policy, summary_policy = demo_policy.prepare(ledger, WORKSPACE, out)
    keys = create_stage_keys(settings, WORKSPACE)
    summary: dict[str, Any] = {"via": via, "workspace": WORKSPACE, "model": MODEL}
    with ExitStack() as stack:
        stack.callback(revoke_stage_keys, settings, keys)
        server = stack.enter_context(InProcessServer(settings, ledger))
        client = None
        if policy is not None:
            opa = stack.enter_context(demo_policy.serving(policy, server.url, keys.publisher_secret, out))
            client = stack.enter_context(OpaClient(opa.url, demo_policy.RULE))
            summary_policy["opa_url"] = opa.url
        person = Person(server.url, keys.approver_secret, out).start()
        rt, leg = stack.enter_context(_runtime(via, settings, ledger, server.url, keys.publisher_secret,
                                               out, client))
        rt.transport = ApprovalTap(rt.transport, person.asked)
        t0 = time.monotonic()
        try:
            done = run_examples(rt, runs, stamp, person, out, lambda: _healthy(person, leg))
        finally:
            person.stop()
        summary["seconds"] = round(time.monotonic() - t0, 3)
        summary["api_url"] = server.url
        if leg is not None:
            ingested = leg.drain({(WORKSPACE, run_id): n for run_id, n in done.events.items()})
            summary.update(bootstrap=leg.bootstrap, topic=leg.topic, dev_broker=leg.broker is not None,
                           ingested=ingested.to_json())
    ledger.checkpoint(force=True)  # the worker signed what it appended; this covers every path
    summary["spotlight"] = _spotlight(done, person)
    if summary["spotlight"] is None:
        out.print("no run asked for a person's approval this time")
    print_runs(done, out)
    if policy is not None:
        summary_policy["decisions"] = demo_policy.print_decisions(done.policy, out)
    summary["policy"] = summary_policy
    if leg is not None:
        print_worker(ingested, out)
    summary["runs"] = done.to_json()
    summary["approvals"] = [d.to_json() for d in person.decisions]
    return summary
