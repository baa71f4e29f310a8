"""Budgets are enforced in the SDK: crossing one records budget.exceeded, cancels the run, raises."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ingest.errors import BudgetExceededError
from ingest.sdk import Budget, ModelResult, Publisher
from ingest.simulate import SeqIds, SimClock
from tachograph.transports import LedgerTransport
from tachograph.contract.canonical import loads
from tests.factories import make_ledger

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path):
    return make_ledger(tmp_path / "ledger.db")


def _run_events(ledger, run_id):
    return [loads(r.data)["event"] for r in ledger.store.run_entries("acme", run_id)]


def _publisher(ledger, clock=None) -> Publisher:
    return Publisher(LedgerTransport(ledger), workspace="acme", agent_id="a", agent_version="1",
                     clock=clock or SimClock(START), ids=SeqIds("e"))


def _call(run, tokens=1000, cost="0.01"):
    return run.model_call(provider="openai", model="gpt-4.1", input_tokens=tokens, output_tokens=0,
                          cost_usd=Decimal(cost), latency_ms=100)


def test_crossing_max_cost_records_budget_exceeded_then_a_cancelled_completion(ledger):
    pub = _publisher(ledger)
    with pytest.raises(BudgetExceededError) as info, pub.run(
        "t", run_id="r1", budget=Budget(max_cost_usd=Decimal("0.025"))
    ) as run:
        _call(run, cost="0.01")
        _call(run, cost="0.01")
        _call(run, cost="0.01")  # 0.03 > 0.025
        pytest.fail("the run must stop at the breach")
    e = info.value
    assert (e.limit, e.limit_value, e.observed) == ("cost_usd", Decimal("0.025"), Decimal("0.03"))
    events = _run_events(ledger, "r1")
    assert [ev["type"] for ev in events] == [
        "run.started", "model.called", "model.called", "model.called", "budget.exceeded", "run.completed"]
    assert events[0]["data"]["budget"] == {"max_cost_usd": Decimal("0.025")}
    assert events[-2]["data"] == {"limit": "cost_usd", "limit_value": Decimal("0.025"),
                                  "observed": Decimal("0.03")}
    assert events[-1]["data"]["outcome"] == "cancelled"


def test_crossing_max_tokens_stops_the_run(ledger):
    pub = _publisher(ledger)
    with pytest.raises(BudgetExceededError, match="tokens"), pub.run(
        "t", run_id="r1", budget=Budget(max_tokens=2500)
    ) as run:
        _call(run, tokens=1000)
        _call(run, tokens=1000)
        _call(run, tokens=1000)
    assert _run_events(ledger, "r1")[-2]["data"]["observed"] == 3000


def test_max_model_calls_refuses_the_call_that_would_exceed_it_without_calling_the_model(ledger):
    pub = _publisher(ledger)
    calls = []

    def model() -> ModelResult:
        calls.append(1)
        return ModelResult(100, 10, Decimal("0.001"), content="ok")

    with pytest.raises(BudgetExceededError) as info, pub.run(
        "t", run_id="r1", budget=Budget(max_model_calls=2)
    ) as run:
        for _ in range(5):
            run.call_model(model, provider="openai", model="gpt-4.1",
                           messages=[{"role": "user", "content": "hi"}])
    assert len(calls) == 2
    assert (info.value.limit, info.value.observed) == ("model_calls", 3)
    types = [ev["type"] for ev in _run_events(ledger, "r1")]
    assert types.count("model.called") == 2
    assert types[-2:] == ["budget.exceeded", "run.completed"]


def test_the_deadline_follows_the_injected_clock(ledger):
    clock = SimClock(START)
    pub = _publisher(ledger, clock)
    with pytest.raises(BudgetExceededError) as info, pub.run(
        "t", run_id="r1", budget=Budget(deadline_s=30)
    ) as run:
        clock.advance(29_000)
        run.tool_call("kb.search", {"q": "x"}, result={"hits": 1}, latency_ms=5)
        clock.advance(2_000)
        run.tool_call("kb.search", {"q": "y"}, fn=lambda q: pytest.fail("must not run past deadline"))
    assert (info.value.limit, info.value.observed) == ("deadline", Decimal("31"))
    events = _run_events(ledger, "r1")
    assert [ev["type"] for ev in events] == [
        "run.started", "tool.called", "budget.exceeded", "run.completed"]


def test_the_agent_can_catch_the_breach_and_the_run_stays_closed(ledger):
    pub = _publisher(ledger)
    caught = None
    try:
        with pub.run("t", run_id="r1", budget=Budget(max_model_calls=0)) as run:
            run.call_model(lambda: ModelResult(1, 1, Decimal(0)), provider="p", model="m")
    except BudgetExceededError as e:
        caught = e
    assert caught is not None and run.completed and run.outcome == "cancelled"
    # a new run after the breach is fine
    with pub.run("t", run_id="r2"):
        pass
    assert [ev["data"]["outcome"] for ev in _run_events(ledger, "r2") if ev["type"] == "run.completed"] == [
        "succeeded"]


def test_a_run_within_budget_completes_normally(ledger):
    pub = _publisher(ledger)
    budget = Budget(max_model_calls=3, max_tokens=10_000, max_cost_usd=Decimal("1"), deadline_s=60)
    with pub.run("t", run_id="r1", budget=budget) as run:
        _call(run)
        _call(run)
        _call(run)
    assert run.usage.model_calls == 3 and run.usage.cost_usd == Decimal("0.03")
    assert _run_events(ledger, "r1")[-1]["data"] == {"outcome": "succeeded"}
    assert "budget.exceeded" not in [ev["type"] for ev in _run_events(ledger, "r1")]
