"""Budgets are enforced by the agent runtime before every step: crossing one records
``budget.exceeded`` and ends the run ``cancelled`` (recorded in a real ledger)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tachograph.runtime import Budget
from tachograph.tools import ToolRegistry
from tests.factories import FakeClock, make_ledger, verify_ledger
from tests.unit.runtime_support import START, FixedModel, agent, events, runtime


@pytest.fixture
def ledger(tmp_path):
    return make_ledger(tmp_path / "ledger.db")


def calls(n: int):
    def call_the_model(ctx, input: dict[str, Any]) -> dict[str, Any]:
        for _ in range(n):
            ctx.llm("classify this ticket")
        return {"calls": n}

    return call_the_model


def test_crossing_max_cost_records_budget_exceeded_then_a_cancelled_completion(ledger):
    with runtime(ledger) as rt:  # each call costs 0.01 USD
        result = rt.run(agent(calls(5)), budget=Budget(max_cost_usd=Decimal("0.025")))
    assert (result.outcome, result.result) == ("cancelled", {"budget_exceeded": "cost_usd"})
    assert result.error == "budget cost_usd exceeded: 0.030000000 > 0.025"
    stored = events(ledger, result.run_id)
    assert [e["type"] for e in stored] == [
        "run.started", "model.called", "model.called", "model.called", "budget.exceeded", "run.completed"]
    assert stored[0]["data"]["budget"] == {"max_cost_usd": Decimal("0.025")}
    assert stored[-2]["data"] == {"limit": "cost_usd", "limit_value": Decimal("0.025"), "observed": Decimal("0.03")}
    assert stored[-1]["data"]["outcome"] == "cancelled"
    assert result.usage.cost_usd == Decimal("0.03") and result.usage.model_calls == 3
    ledger.checkpoint(force=True)
    assert verify_ledger(ledger).ok


def test_crossing_max_tokens_stops_the_run(ledger):
    with runtime(ledger) as rt:
        result = rt.run(agent(calls(5)), budget=Budget(max_tokens=2500))
    stored = events(ledger, result.run_id)
    assert [e["type"] for e in stored].count("model.called") == 3
    assert stored[-2]["data"] == {"limit": "tokens", "limit_value": 2500, "observed": 3000}
    assert result.outcome == "cancelled"


def test_max_model_calls_refuses_the_call_that_would_exceed_it_without_calling_the_model(ledger):
    model = FixedModel()
    with runtime(ledger, model=model) as rt:
        result = rt.run(agent(calls(5)), budget=Budget(max_model_calls=2))
    assert len(model.calls) == 2  # the third call never reached the model
    stored = events(ledger, result.run_id)
    assert [e["type"] for e in stored].count("model.called") == 2
    assert stored[-2]["data"] == {"limit": "model_calls", "limit_value": 2, "observed": 3}
    assert [e["type"] for e in stored][-2:] == ["budget.exceeded", "run.completed"]


def test_the_deadline_follows_the_injected_clock_and_the_step_past_it_never_runs(ledger):
    clock = FakeClock(START)
    ran: list[str] = []
    tools = ToolRegistry()
    tools.register("kb.search", lambda args: ran.append(args["q"]) or {"hits": 1}, "read")

    def slow_agent(ctx, input):
        clock.advance(29)
        ctx.tool("kb.search", {"q": "x"})
        clock.advance(2)
        ctx.tool("kb.search", {"q": "y"})  # 31 s after run.started: over the deadline
        return {}

    with runtime(ledger, clock=clock) as rt:
        result = rt.run(agent(slow_agent, tools), budget=Budget(deadline_s=30))
    assert ran == ["x"]
    stored = events(ledger, result.run_id)
    assert [e["type"] for e in stored] == ["run.started", "tool.called", "budget.exceeded", "run.completed"]
    assert stored[2]["data"] == {"limit": "deadline", "limit_value": 30, "observed": 31}
    assert stored[0]["data"]["budget"] == {"deadline_s": 30}
    assert (result.outcome, result.result) == ("cancelled", {"budget_exceeded": "deadline"})


def test_agent_code_cannot_swallow_a_breach_and_the_next_run_is_fine(ledger):
    seen: list[str] = []

    def stubborn(ctx, input):
        for _ in range(3):
            try:
                ctx.llm("again")
            except Exception as e:  # a breach is not an Exception: agent code cannot catch it
                seen.append(type(e).__name__)
        return {"went_on": True}

    with runtime(ledger) as rt:
        stopped = rt.run(agent(stubborn), budget=Budget(max_model_calls=1))
        after = rt.run(agent(calls(1)), budget=Budget(max_model_calls=1))
    assert seen == [] and stopped.outcome == "cancelled" and stopped.result == {"budget_exceeded": "model_calls"}
    assert [e["type"] for e in events(ledger, stopped.run_id)][-2:] == ["budget.exceeded", "run.completed"]
    assert after.outcome == "succeeded" and events(ledger, after.run_id)[-1]["data"]["outcome"] == "succeeded"


def test_a_run_within_budget_completes_normally_and_reports_its_usage(ledger):
    budget = Budget(max_model_calls=3, max_tokens=10_000, max_cost_usd="1", deadline_s=60)
    with runtime(ledger) as rt:
        result = rt.run(agent(calls(3)), budget=budget)
    assert (result.outcome, result.result) == ("succeeded", {"calls": 3})
    assert (result.usage.model_calls, result.usage.tokens, result.usage.cost_usd) == (3, 3000, Decimal("0.03"))
    stored = events(ledger, result.run_id)
    assert stored[0]["data"]["budget"] == {"max_model_calls": 3, "max_tokens": 10_000,
                                           "max_cost_usd": Decimal("1"), "deadline_s": 60}
    assert "budget.exceeded" not in [e["type"] for e in stored]


def test_money_in_a_budget_is_never_a_float():
    with pytest.raises(TypeError, match="float"):
        Budget(max_cost_usd=0.1).to_json()  # type: ignore[arg-type]
