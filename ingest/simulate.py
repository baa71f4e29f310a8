"""Simulated agent services that publish realistic runs through the SDK (demo, tests, bench).

Three services (ticket triage, invoice matching, access review), each its own producer and agent
identity, run seeded workflows with realistic token costs, tool failures, policy denials,
approvals, changes and budget breaches. Time is simulated (an injected clock advanced by each
step's latency), so a seed always gives the same runs.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from domain.workload import MODELS, cost_of
from ingest.errors import BudgetExceededError, RunHaltedError
from ingest.sdk import Budget, ModelResult, Publisher, RunRecorder
from tachograph.halts import HaltSource
from tachograph.transports import KafkaTransport, Transport


class SimClock:
    """A clock that only moves when the simulation says so."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, ms: int) -> None:
        """Move time forward by ``ms`` milliseconds."""
        self.now += timedelta(milliseconds=ms)


class SeqIds:
    """Deterministic ids: ``<prefix>-<n>``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n:08d}"


@dataclass
class PublishedSummary:
    """What the simulated services published."""

    runs: int = 0
    events: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    budget_exceeded: Counter[str] = field(default_factory=Counter)
    halted: Counter[str] = field(default_factory=Counter)
    by_workflow: Counter[str] = field(default_factory=Counter)
    cost_usd: Decimal = Decimal(0)
    event_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Counts as JSON (event ids left out)."""
        return {
            "runs": self.runs,
            "events": self.events,
            "outcomes": dict(self.outcomes),
            "budget_exceeded": dict(self.budget_exceeded),
            "halted": dict(self.halted),
            "by_workflow": dict(self.by_workflow),
            "cost_usd": str(self.cost_usd),
        }


class _Agent:
    """One simulated agent service."""

    workflow = ""
    agent_id = ""
    version = ""
    tools: tuple[str, ...] = ()
    write_tool = ""

    def __init__(self, publisher: Publisher, clock: SimClock, rng: random.Random) -> None:
        self.publisher = publisher
        self.clock = clock
        self.rng = rng
        self.model = MODELS[rng.randrange(len(MODELS))]

    def think(self, run: RunRecorder, step: int) -> None:
        rng, model = self.rng, self.model

        def call() -> ModelResult:
            tin, tout = rng.randrange(400, 9000), rng.randrange(60, 1200)
            self.clock.advance(rng.randrange(300, 4000))
            return ModelResult(tin, tout, cost_of(model, tin, tout), content=f"plan step {step}",
                               confidence=Decimal(rng.randrange(40, 100)) / 100)

        run.call_model(call, provider=model[0], model=model[1],
                       messages=[{"role": "user", "content": f"{self.workflow} step {step}"}])

    def read(self, run: RunRecorder, step: int) -> None:
        tool = self.rng.choice(self.tools)
        fails = self.rng.random() < 0.08

        def fn(**args: Any) -> Any:
            self.clock.advance(self.rng.randrange(5, 800))
            if fails:
                raise TimeoutError(f"{tool} timed out")
            return {"rows": self.rng.randrange(6)}

        try:
            run.tool_call(tool, {"id": self.rng.randrange(100_000), "step": step}, fn)
        except TimeoutError:
            if self.rng.random() < 0.5:
                raise  # the agent gives up: the run is recorded as failed

    def write(self, run: RunRecorder, step: int) -> None:
        rng = self.rng
        decision: Literal["allow", "deny", "require_approval"] = rng.choices(
            ["allow", "deny", "require_approval"], [5, 2, 3]
        )[0]  # type: ignore[assignment]
        run.policy(f"{self.workflow}.writes", self.write_tool, decision,
                   {"allow": "within limits", "deny": "over the agent's limit",
                    "require_approval": "needs a human"}[decision],
                   risk_score=Decimal(rng.randrange(0, 100)) / 100)
        if decision == "deny":
            return
        amount = rng.randrange(10, 900)
        cid = run.propose_change(self.write_tool, {"amount": 0}, {"amount": amount},
                                 reversible=rng.random() < 0.8)
        if decision == "require_approval":
            aid = run.request_approval(f"{self.write_tool} of {amount}", "high", change_id=cid)
            self.clock.advance(rng.randrange(30_000, 600_000))
            granted = rng.random() < 0.75
            run.decide_approval(aid, "approved" if granted else "rejected",
                                rng.choice(["alice@acme.test", "bob@acme.test"]),
                                None if granted else "amount too high")
            if not granted:
                return
        run.apply_change(cid, fn=lambda: self.clock.advance(rng.randrange(20, 300)))

    def budget(self) -> Budget:
        tight = self.rng.random() < 0.15  # some runs get a budget they will break
        return Budget(
            max_model_calls=3 if tight else 8,
            max_tokens=12_000 if tight else 60_000,
            max_cost_usd=Decimal("0.02") if tight else Decimal("0.50"),
            deadline_s=600 if tight else 3600,
        )

    def run_once(self, n: int, summary: PublishedSummary) -> None:
        rng = self.rng
        mode = rng.choices(["execute", "suggest", "dry_run"], [6, 2, 1])[0]
        outcome = "?"
        recorder: RunRecorder | None = None
        try:
            with self.publisher.run(
                self.workflow, mode=mode,  # type: ignore[arg-type]
                risk_tier=rng.choice(["low", "medium", "high"]), budget=self.budget(),
                input={"case": f"{self.workflow}-{n}"},
                labels={"route": f"{self.model[0]}/{self.model[1]}"},
            ) as run:
                recorder = run
                for step in range(rng.randrange(2, 7)):
                    self.think(run, step)
                    if rng.random() < 0.35:
                        self.write(run, step)
                    else:
                        self.read(run, step)
                if rng.random() < 0.1:
                    run.complete("escalated", result={"reason": "low confidence"})
                else:
                    run.complete("succeeded", result={"resolved": True})
            if rng.random() < 0.3:
                run.feedback(rng.random() < 0.85, "carol@acme.test")
                self.publisher.flush()
        except BudgetExceededError as e:
            summary.budget_exceeded[e.limit] += 1
        except RunHaltedError as e:  # a halt stopped the run: recorded as cancelled
            summary.halted[self.workflow] += 1
            outcome = "cancelled"
            if recorder is None:  # refused before it started: its events are only in the error
                summary.events += len(e.event_ids)
                summary.event_ids.extend(e.event_ids)
        except TimeoutError:
            pass  # recorded as a failed run by the SDK
        if recorder is not None:
            outcome = recorder.outcome or "?"
            summary.events += len(recorder.event_ids)
            summary.event_ids.extend(recorder.event_ids)
            summary.cost_usd += recorder.usage.cost_usd
        summary.runs += 1
        summary.outcomes[outcome] += 1
        summary.by_workflow[self.workflow] += 1
        self.clock.advance(rng.randrange(1_000, 120_000))


class TriageAgent(_Agent):
    workflow, agent_id, version = "ticket-triage", "triage-agent", "2.4.0"
    tools, write_tool = ("kb.search", "crm.lookup"), "refund.issue"


class InvoiceAgent(_Agent):
    workflow, agent_id, version = "invoice-matching", "ap-agent", "1.9.0"
    tools, write_tool = ("erp.invoice", "erp.po"), "erp.post"


class AccessAgent(_Agent):
    workflow, agent_id, version = "access-review", "iam-agent", "0.9.0"
    tools, write_tool = ("iam.list", "iam.groups"), "iam.revoke"


SERVICES: tuple[type[_Agent], ...] = (TriageAgent, InvoiceAgent, AccessAgent)


def run_simulated_agents(
    bootstrap: str,
    topic: str,
    runs: int,
    seed: int = 7,
    workspace: str = "acme",
    start: datetime = datetime(2026, 11, 2, 8, 0, tzinfo=UTC),
    progress: Callable[[int], None] | None = None,
    transport_factory: Callable[[], Transport] | None = None,
    halts: HaltSource | None = None,
) -> PublishedSummary:
    """Run ``runs`` runs spread over three simulated agent services publishing to Kafka.

    Each service has its own idempotent producer; every run is flushed when it ends. ``progress``
    is called with 1 after each run. ``halts`` (the kill switches) stops runs that are halted;
    they are recorded as cancelled and counted by workflow in ``halted``.
    """
    rng = random.Random(seed)
    summary = PublishedSummary()
    services: list[_Agent] = []
    transports: list[Transport] = []
    for i, cls in enumerate(SERVICES):
        transport = (
            transport_factory() if transport_factory is not None
            else KafkaTransport(bootstrap, topic, linger_ms=2)
        )
        transports.append(transport)
        clock = SimClock(start)
        publisher = Publisher(transport, workspace=workspace, agent_id=cls.agent_id,
                              agent_version=cls.version, clock=clock,
                              ids=SeqIds(f"s{seed}-{cls.agent_id}"), halts=halts)
        services.append(cls(publisher, clock, random.Random(rng.randrange(2**32) + i)))
    try:
        for n in range(runs):
            services[n % len(services)].run_once(n, summary)
            if progress is not None:
                progress(1)
    finally:
        for t in transports:
            t.close()
    return summary
