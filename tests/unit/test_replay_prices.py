"""Replays price candidate calls through the price table; a model with no price is recorded
unpriced (never refused, never free) and the replay's figures say how many calls had no price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from replay.history import RecordedRun
from replay.replaying import ReplayContext
from replay.report import Gate, RunResult, estimate, figures, summarize
from tachograph.builder import RunSpec
from tachograph.context import run_agent
from tachograph.contract.events import SPEC
from tachograph.models import ChatRequest, ChatResponse, ModelRegistry
from tachograph.prices import PriceTable
from tachograph.tools import ToolRegistry

STARTED = "2025-06-01T10:00:00Z"
AGENT = {"id": "a", "version": "1"}


class Canned:
    """A local adapter answering ``ok`` with fixed usage, under any model name."""

    def __init__(self, name: str, provider: str) -> None:
        self.name, self.provider = name, provider

    def complete(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse("ok", 1000, 500, Decimal(5))


def _event(seq: int, etype: str, data: dict[str, Any], time: str = STARTED) -> dict[str, Any]:
    return {"spec": SPEC, "event_id": f"r1-{seq}", "workspace": "acme", "run_id": "r1", "seq": seq,
            "type": etype, "time": time, "agent": AGENT, "data": data}


def _call(seq: int, model: str, cost: str, priced: bool | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"call_id": f"m{seq}", "provider": "openai", "model": model,
                            "input_tokens": 1000, "output_tokens": 500, "cost_usd": cost,
                            "latency_ms": 5}
    if priced is not None:
        data["priced"] = priced
    return _event(seq, "model.called", data, "2025-06-01T10:00:01Z")


def _recorded(*calls: dict[str, Any]) -> RecordedRun:
    events = [_event(0, "run.started", {"workflow": "wf", "mode": "execute", "risk_tier": "low"}),
              *calls, _event(len(calls) + 1, "run.completed", {"outcome": "succeeded"})]
    return RecordedRun("acme", "r1", events=events)


def _what_if(candidate: str, provider: str) -> list[dict[str, Any]]:
    models = ModelRegistry()
    models.register(Canned(candidate, provider))
    spec = RunSpec("acme", "r1-replay", "wf", AGENT, input={}, replay_of="r1")
    ctx = ReplayContext(spec, _recorded(_call(1, "sim-small-v1", "0.000450")), mode="what-if",
                        tools=ToolRegistry(), prompts={}, models=models, candidate_model=candidate)
    return run_agent(lambda c, i: {"said": c.llm("hello").content}, ctx)


def test_a_what_if_on_a_model_with_no_price_records_the_call_unpriced_and_finishes():
    events = _what_if("smollm2-135m-instruct", "openai-compatible")
    call = events[1]["data"]
    assert (call["model"], call["cost_usd"], call["priced"]) == ("smollm2-135m-instruct", "0", False)
    assert events[-1]["data"]["outcome"] == "succeeded"
    after = figures(events, None).to_json()
    assert (after["cost_usd"], after["unpriced_calls"]) == (None, 1)


def test_a_what_if_on_a_hosted_model_is_priced_as_of_the_recorded_run():
    events = _what_if("gpt-4o-mini", "openai")
    call = events[1]["data"]
    expected = PriceTable().cost("gpt-4o-mini", 1000, 500, "openai",
                                 at=datetime(2025, 6, 1, 10, tzinfo=UTC))
    assert Decimal(call["cost_usd"]) == expected == Decimal("0.00045")
    assert "priced" not in call


def test_the_summary_counts_unpriced_calls_and_the_cost_gate_fails_on_an_unknown_increase():
    before = figures(_recorded(_call(1, "gpt-4o-mini", "0.00045")).events, None)
    after = figures(_recorded(_call(1, "local", "0", priced=False), _call(2, "gpt-4o-mini", "0.1")).events,
                    None)
    assert (after.cost_usd, after.unpriced_calls) == (Decimal("0.1"), 1)  # the priced part only
    summary = summarize([RunResult("r1", "acme", "r1-replay", "changed", before, after)])
    assert summary["before"]["cost_usd"] == Decimal("0.00045")
    assert summary["after"]["cost_usd"] is None and summary["after"]["cost_per_success"] is None
    assert (summary["after"]["unpriced_calls"], summary["after"]["unpriced_runs"]) == (1, 1)
    assert summary["cost_increase"] is None and summary["unpriced_calls"] == 1
    failures = Gate(max_cost_increase=Decimal("0.1")).failures(summary)
    assert failures == ["cost increase is unknown: 1 model call(s) had no known price "
                        "(price them in a price file, TACHO_PRICES)"]
    assert Gate().failures(summary) == []  # no cost gate asked for: nothing to fail


def test_the_estimate_prices_recorded_tokens_and_counts_what_it_cannot_price():
    runs = [_recorded(_call(1, "gpt-4o-mini", "0.00045"), _call(2, "local", "0", priced=False))]
    est = estimate(runs, "gpt-4.1-mini", PriceTable())
    assert est["cost_estimated_usd"] == Decimal("0.0024")  # $0.40 / $1.60 per million, twice
    assert est["cost_before_usd"] is None and est["unpriced_calls_before"] == 1
    assert est["cost_increase"] is None
    est = estimate(runs, "smollm2-135m-instruct", PriceTable())
    assert est["cost_estimated_usd"] is None and est["unpriced_calls_estimated"] == 2
    priced = estimate([_recorded(_call(1, "gpt-4o-mini", "0.00045"))], None, PriceTable())
    assert priced["cost_estimated_usd"] == priced["cost_before_usd"] == Decimal("0.00045")
    assert priced["cost_increase"] == Decimal(0) and priced["unpriced_calls"] == 0
