"""Step replay: each recorded model request sent again to a candidate, answers compared, gated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from ingest.embedded import embedded_runtime
from ingest.otlp_messages import TRUNCATED_ROLE
from replay.history import load_runs
from replay.report import Gate
from replay.steps import StepConfig, run_step_replay
from tachograph.agents import AgentSpec
from tachograph.builder import RunLog, RunSpec, seq_event_id
from tachograph.context import Context
from tachograph.errors import ModelRequestError
from tachograph.models import ChatRequest, ChatResponse, ModelRegistry, PriceTable
from tachograph.tools import ToolRegistry
from tests.factories import FakeClock, append_deciding, make_ledger

TOOLS = [{"type": "function", "function": {"name": "crm_lookup", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "kb_search", "parameters": {"type": "object"}}}]


class ToolPicker:
    """A local model: with tools, calls ``tool`` (index into the tools) with ``{"tier": tier}``;
    otherwise ``refund`` when the text mentions money, else ``fallback``."""

    provider = "test"

    def __init__(self, name: str, *, fallback: str = "billing", tool: int = 0, tier: str = "gold",
                 refuse: bool = False) -> None:
        self.name, self.fallback, self.tool, self.tier, self.refuse = name, fallback, tool, tier, refuse

    def complete(self, request: ChatRequest) -> ChatResponse:
        if self.refuse:
            raise ModelRequestError(f"{self.name}: HTTP 400: context too long")
        tools = request.params.get("tools")
        if tools:
            name = tools[self.tool]["function"]["name"]
            calls = [{"id": "call-x", "type": "function",
                      "function": {"name": name, "arguments": json.dumps({"tier": self.tier})}}]
            return ChatResponse("", 20, 5, Decimal(3), "tool_calls", calls)
        text = str(request.messages[-1]["content"])
        return ChatResponse("refund" if "money" in text else self.fallback, 12, 1, Decimal(3))


PRICE = PriceTable().price("sim-small-v1")
MODELS = {
    "recorded": ToolPicker("recorded"),
    "same": ToolPicker("same"),
    "other-args": ToolPicker("other-args", tier="silver"),
    "other-tool": ToolPicker("other-tool", tool=1),
    "other-words": ToolPicker("other-words", fallback="technical"),
    "refuses": ToolPicker("refuses", refuse=True),
    "unpriced": ToolPicker("unpriced"),
}


def _models() -> ModelRegistry:
    prices = PriceTable({**PriceTable().prices, **{n: PRICE for n in MODELS if n != "unpriced"}})
    models = ModelRegistry(prices=prices)
    for m in MODELS.values():
        models.register(m)
    return models


def support(ctx: Context, input: Mapping[str, Any]) -> dict[str, Any]:
    category = ctx.llm(f"Classify: {input['text']}").content
    ctx.llm([{"role": "user", "content": f"Look up {input['customer']}"}], params={"tools": TOOLS})
    return {"category": category}


SPEC = AgentSpec("tests.unit.test_replay_steps:support", support, ToolRegistry(), {}, "support",
                 {"id": "support-agent", "version": "1.0.0"})
TEXTS = ("I want my money back", "The app crashes", "Change my plan")


@pytest.fixture
def recorded(tmp_path):
    ledger = make_ledger(tmp_path / "ledger.db", clock=FakeClock())
    with embedded_runtime(ledger, "acme", clock=FakeClock(), event_ids=seq_event_id, models=_models(),
                          model="recorded") as rt:
        for i, text in enumerate(TEXTS):
            rt.run(SPEC, {"text": text, "customer": f"C-{i}"}, run_id=f"run-{i}")
    return ledger


def _replay(ledger, model: str, gate: Gate | None = None) -> dict[str, Any]:
    runs = load_runs(ledger.store, workflow="support", finished_only=False)
    return run_step_replay(runs, StepConfig("steps-1", "2026-11-20T10:00:00Z", model, gate or Gate()),
                           _models())


def test_the_same_answers_are_unchanged_and_pass_a_zero_change_gate(recorded):
    report = _replay(recorded, "same", Gate(max_response_change=Decimal(0), max_cost_increase=Decimal(0)))
    s = report["summary"]
    assert (s["model_calls"], s["replayed_calls"], s["responses_changed"]) == (6, 6, 0)
    assert s["response_change_rate"] == Decimal(0) and s["cost_increase"] == Decimal(0)
    assert report["gate"]["passed"] and report["mode"] == "steps"
    assert [r["status"] for r in report["runs"]] == ["unchanged"] * 3


def test_changed_words_are_response_changes_and_fail_the_gate(recorded):
    report = _replay(recorded, "other-words", Gate(max_response_change=Decimal("0.2")))
    s = report["summary"]
    assert s["responses_changed"] == 2 and s["tool_calls_changed"] == 0  # "money" still says refund
    assert s["response_change_rate"] == Decimal("0.333333")
    assert report["gate"]["failures"] == ["response change rate 0.333333 is over the limit 0.2"]
    changed = [c for r in report["runs"] for c in r["calls"] if c["response_changed"]]
    assert [(c["run_id"], c["before"]["content"], c["after"]["content"]) for c in changed] == [
        ("run-1", "billing", "technical"), ("run-2", "billing", "technical")]


def test_tool_call_arguments_and_choice_are_told_apart(recorded):
    args = _replay(recorded, "other-args", Gate(max_tool_call_change=Decimal("0.5")))["summary"]
    assert (args["tool_calls_changed"], args["tool_choices_changed"]) == (3, 0)
    assert args["tool_call_change_rate"] == Decimal("0.5")
    choice = _replay(recorded, "other-tool", Gate(max_tool_call_change=Decimal("0.4")))
    s = choice["summary"]
    assert (s["tool_calls_changed"], s["tool_choices_changed"]) == (3, 3)
    assert not choice["gate"]["passed"]
    call = choice["runs"][0]["calls"][1]
    assert call["tool_choice_changed"] is True and call["tool_args_changed"] is False
    assert call["after"]["tool_calls"][0]["function"]["name"] == "kb_search"
    assert call["before"]["input_tokens"] == 20 and call["before"]["cost_usd"] is not None


def test_calls_without_a_request_or_cut_at_ingest_are_counted_not_sent(recorded):
    spec = RunSpec("acme", "otlp-run", "support", {"id": "support-bot", "version": ""},
                   labels={"source": "otlp"})
    log = RunLog(spec)
    t = "2026-11-20T10:00:00Z"
    log.build("run.started", spec.started_data(), t)
    base = {"provider": "openai", "model": "recorded", "input_tokens": 5, "output_tokens": 1,
            "cost_usd": "0.000001", "latency_ms": 3}
    log.build("model.called", {**base, "call_id": "m1"}, t)  # no request kept
    log.build("model.called", {**base, "call_id": "m2", "request": {"messages": [
        {"role": "user", "content": "xxx"}, {"role": TRUNCATED_ROLE, "content": {"messages": 9}}]}}, t)
    log.build("model.called", {**base, "call_id": "m3", "request": {"messages": [
        {"role": "user", "content": "money please"}]}}, t)  # request but no response: sent, not compared
    append_deciding(recorded, log.events)
    s = _replay(recorded, "same")["summary"]
    assert s["runs"] == 4 and s["model_calls"] == 9
    assert s["unreplayable_calls"] == 2
    assert s["unreplayable_reasons"] == {"no-request": 1, "truncated-request": 1}
    assert s["replayed_calls"] == 7 and s["compared_calls"] == 6


def test_a_refused_request_is_an_error_and_a_changed_answer(recorded):
    s = _replay(recorded, "refuses")["summary"]
    assert s["errors"] == 6 and s["responses_changed"] == 6 and s["response_change_rate"] == Decimal(1)


def test_an_unpriced_candidate_makes_the_cost_unknown_and_a_cost_gate_fails(recorded):
    report = _replay(recorded, "unpriced", Gate(max_cost_increase=Decimal("0.1")))
    s = report["summary"]
    assert s["after"]["cost_usd"] is None and s["after"]["unpriced_calls"] == 6 and s["cost_increase"] is None
    assert s["before"]["cost_usd"] is not None
    assert "cost increase is unknown" in report["gate"]["failures"][0]
