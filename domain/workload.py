"""A deterministic generator of realistic, contract-valid agent runs (demo, tests, benchmarks).

Randomness and time are injected (a seeded ``random.Random`` and a base time), so the same
arguments always give the same events. Envelopes come from the one builder
(``tachograph.builder.envelope``).

No person decides a synthetic run's approvals, so none is decided: a run whose policy requires
approval records ``approval.requested`` with a timeout, waits it out and takes its not-approved
path, as a runtime agent does when nobody answers (docs/decisions/0004-approvals.md). Generated
runs therefore hold no ``approval.decided`` that a ledger requiring persons' decisions would refuse.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tachograph.builder import envelope

# (provider, model, $ per 1M input tokens, $ per 1M output tokens)
MODELS = [
    ("openai", "gpt-4.1-mini", Decimal("0.40"), Decimal("1.60")),
    ("anthropic", "claude-haiku-4", Decimal("0.80"), Decimal("4.00")),
    ("openai", "gpt-4.1", Decimal("2.00"), Decimal("8.00")),
]
WORKFLOWS = {
    "ticket-triage": ("triage-agent", ["2.3.0", "2.4.0"], ["kb.search", "crm.lookup", "refund.issue"]),
    "invoice-matching": ("ap-agent", ["1.8.1", "1.9.0"], ["erp.invoice", "erp.po", "erp.post"]),
    "access-review": ("iam-agent", ["0.9.0"], ["iam.list", "iam.revoke"]),
}
WRITE_TOOLS = {"refund.issue", "erp.post", "iam.revoke"}


def cost_of(model: tuple[str, str, Decimal, Decimal], tin: int, tout: int) -> Decimal:
    """Exact price of one call, rounded to 9 decimal places."""
    c = (model[2] * tin + model[3] * tout) / Decimal(1_000_000)
    return c.quantize(Decimal("1e-9"))


@dataclass
class _Run:
    workspace: str
    run_id: str
    workflow: str
    agent: dict[str, str]
    t: datetime
    seq: int = 0


class Workload:
    """Generates runs; ``events()`` yields contract events, interleaving concurrent runs."""

    def __init__(
        self,
        seed: int = 7,
        runs: int = 100,
        workspaces: tuple[str, ...] = ("acme",),
        start: datetime = datetime(2026, 11, 2, 8, 0, tzinfo=UTC),
        days: int = 14,
        payload_bytes: int = 200,
    ) -> None:
        self.rng = random.Random(seed)
        self.runs = runs
        self.workspaces = workspaces
        self.start = start
        self.days = days
        self.payload_bytes = payload_bytes

    def _event(self, run: _Run, etype: str, data: dict[str, Any], ms: int) -> dict[str, Any]:
        run.t += timedelta(milliseconds=ms)
        ev = envelope(workspace=run.workspace, run_id=run.run_id, seq=run.seq, etype=etype,
                      time=run.t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                      agent=run.agent, data=data)
        run.seq += 1
        return ev

    def run_events(self, n: int) -> list[dict[str, Any]]:
        """All events of run number ``n``."""
        rng = self.rng
        workflow = rng.choice(sorted(WORKFLOWS))
        agent_id, versions, tools = WORKFLOWS[workflow]
        ws = self.workspaces[n % len(self.workspaces)]
        when = self.start + timedelta(seconds=rng.randrange(self.days * 86400))
        run = _Run(ws, f"run-{n:07d}", workflow, {"id": agent_id, "version": rng.choice(versions)}, when)
        model = MODELS[rng.randrange(len(MODELS))]
        budget: dict[str, Any] = {"max_model_calls": 8, "max_tokens": 40_000, "max_cost_usd": "0.25", "deadline_s": 120}
        risk = rng.choice(["low", "medium", "high"])
        out = [
            self._event(
                run,
                "run.started",
                {
                    "workflow": workflow,
                    "mode": rng.choice(["execute", "execute", "suggest", "dry_run"]),
                    "risk_tier": risk,
                    "budget": budget,
                    "input": {"ticket": f"T-{n}", "text": "x" * rng.randrange(self.payload_bytes // 2 + 1)},
                    "labels": {"route": f"{model[0]}/{model[1]}"},
                },
                0,
            )
        ]
        calls = tokens = 0
        cost = Decimal(0)
        breached = None
        steps = rng.randrange(2, 7)
        for step in range(steps):
            tin, tout = rng.randrange(300, 6000), rng.randrange(50, 900)
            c = cost_of(model, tin, tout)
            calls, tokens, cost = calls + 1, tokens + tin + tout, cost + c
            out.append(
                self._event(
                    run,
                    "model.called",
                    {
                        "call_id": f"m{step}",
                        "provider": model[0],
                        "model": model[1],
                        "input_tokens": tin,
                        "output_tokens": tout,
                        "cost_usd": str(c),
                        "latency_ms": rng.randrange(200, 4000),
                        "request": {"messages": [{"role": "user", "content": f"step {step} of {workflow}"}]},
                        "response": {"content": "ok " * rng.randrange(1, 30), "finish_reason": "stop"},
                        "confidence": Decimal(rng.randrange(50, 100)) / 100,
                    },
                    rng.randrange(200, 4000),
                )
            )
            if tokens > budget["max_tokens"] or cost > Decimal(str(budget["max_cost_usd"])):
                breached = ("tokens", budget["max_tokens"], tokens) if tokens > budget["max_tokens"] else (
                    "cost_usd", Decimal(str(budget["max_cost_usd"])), cost)
                break
            tool = rng.choice(tools)
            write = tool in WRITE_TOOLS
            if write:
                decision = rng.choices(["allow", "deny", "require_approval"], [5, 2, 3])[0]
                out.append(
                    self._event(
                        run,
                        "policy.evaluated",
                        {
                            "policy": f"{workflow}.writes",
                            "action": tool,
                            "decision": decision,
                            "reason": {"allow": "within limits", "deny": "over limit",
                                       "require_approval": "needs a human"}[decision],
                            "risk_score": Decimal(rng.randrange(0, 100)) / 100,
                        },
                        5,
                    )
                )
                if decision == "deny":
                    continue
                cid = f"c{step}"
                out.append(
                    self._event(
                        run,
                        "change.proposed",
                        {"change_id": cid, "target": tool, "before": {"amount": 0},
                         "after": {"amount": rng.randrange(10, 500)}, "reversible": rng.random() < 0.8},
                        10,
                    )
                )
                if decision == "require_approval":
                    # nobody decides: the request expires and the run goes on without the change
                    timeout_s = rng.randrange(30, 900)
                    out.append(self._event(run, "approval.requested",
                                           {"approval_id": f"{run.run_id}/a{step}",
                                            "summary": f"{tool} for {run.run_id}", "risk": risk,
                                            "change_id": cid, "timeout_s": timeout_s}, 5))
                    run.t += timedelta(seconds=timeout_s)
                    continue
                out.append(self._event(run, "change.applied", {"change_id": cid}, 20))
                continue
            ok = rng.random() < 0.92
            out.append(
                self._event(
                    run,
                    "tool.called",
                    {"call_id": f"t{step}", "tool": tool, "args": {"id": rng.randrange(10_000)},
                     "status": "ok" if ok else "error",
                     **({"result": {"rows": rng.randrange(5)}} if ok else {"error": "timeout"}),
                     "latency_ms": rng.randrange(5, 900), "side_effect": "read"},
                    rng.randrange(5, 900),
                )
            )
        if breached is not None:
            out.append(self._event(run, "budget.exceeded",
                                   {"limit": breached[0], "limit_value": breached[1], "observed": breached[2]}, 1))
            outcome = "cancelled"
        else:
            outcome = rng.choices(["succeeded", "failed", "escalated"], [80, 12, 8])[0]
        out.append(self._event(run, "run.completed",
                               {"outcome": outcome, **({"result": {"resolved": True}} if outcome == "succeeded" else {})},
                               50))
        if rng.random() < 0.3:
            out.append(self._event(run, "feedback.recorded",
                                   {"accepted": rng.random() < 0.85, "by": "carol@acme.test"},
                                   rng.randrange(60_000, 86_400_000)))
        return out

    def events(self, interleave: int = 8) -> Iterator[dict[str, Any]]:
        """Every event of every run; ``interleave`` runs are in flight at once."""
        active: list[list[dict[str, Any]]] = []
        n = 0
        while n < self.runs or active:
            while len(active) < interleave and n < self.runs:
                active.append(self.run_events(n))
                n += 1
            i = self.rng.randrange(len(active))
            yield active[i].pop(0)
            if not active[i]:
                active.pop(i)
