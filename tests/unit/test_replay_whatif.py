"""What-if replays: candidate models and prompts, recorded tool answers, divergence, determinism."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from domain.approvals import ApprovalRow
from ingest.embedded import StandInApprover, Verdict, embedded_runtime
from replay.demo import record_examples
from replay.engine import ReplayConfig, replay_one, run_replay
from replay.errors import PromptError, UnknownModelError
from replay.history import RecordedRun, load_runs
from replay.report import Gate, estimate
from tachograph.agents import AgentSpec, load_agent
from tachograph.builder import seq_event_id
from tachograph.context import Context
from tachograph.models import SIMULATED, ChatRequest, ChatResponse, ModelRegistry, PriceTable
from tachograph.tools import ToolRegistry
from tests.factories import FakeClock, make_ledger


class ScriptedModel:
    """A local model that answers ``yes`` to requests containing a word, else ``no``."""

    provider = "test"

    def __init__(self, name: str, yes_when: str) -> None:
        self.name = name
        self.yes_when = yes_when

    def complete(self, request: ChatRequest) -> ChatResponse:
        text = str(request.messages[-1]["content"])
        return ChatResponse("yes" if self.yes_when in text else "no", 10, 1, Decimal(5))


class Calls:
    """Counts live tool calls so tests can prove replays never make them."""

    def __init__(self) -> None:
        self.live: list[str] = []


CALLS = Calls()


def _tools(with_write_simulator: bool) -> ToolRegistry:
    tools = ToolRegistry()

    def lookup(args: Mapping[str, Any]) -> Any:
        CALLS.live.append("lookup")
        return {"id": args["id"], "colour": "red" if args["id"] % 2 else "blue"}

    def write(args: Mapping[str, Any]) -> Any:
        CALLS.live.append("write")
        return {"written": args["id"]}

    tools.register("lookup", lookup, "read", simulator=lambda a: {"id": a["id"], "colour": "simulated"})
    tools.register("write", write, "write",
                   simulator=(lambda a: {"written": "dry-run"}) if with_write_simulator else None)
    return tools


def agent(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    info = ctx.tool("lookup", {"id": input["id"]})
    answer = ctx.llm(f"{ctx.prompt('ask')} item {input['id']} is {info['colour']}").content
    if answer == "yes":
        ctx.policy("writes", "write", "require_approval" if input.get("big") else "allow", "size rule")
        change = ctx.propose_change("write", {"v": 0}, {"v": input["id"]})
        if input.get("big") and not ctx.request_approval(f"write {input['id']}", "low", change):
            return {"outcome": "escalated", "answer": answer}
        ctx.tool("write", {"id": input["id"]})
        ctx.apply_change(change)
    return {"answer": answer}


def _spec(with_write_simulator: bool = False) -> AgentSpec:
    return AgentSpec("tests:agent", agent, _tools(with_write_simulator), {"ask": "Which colour?"}, "wf",
                     {"id": "test-agent", "version": "1"})


def _models() -> ModelRegistry:
    models = ModelRegistry(prices=PriceTable({**PriceTable().prices,
                                              "likes-red": PriceTable().price("sim-small-v1"),
                                              "likes-blue": PriceTable().price("sim-large-v2")}))
    models.register(ScriptedModel("likes-red", "red"))
    models.register(ScriptedModel("likes-blue", "blue"))
    return models


def _approve(row: ApprovalRow) -> Verdict:
    return "approved", None


def _record(tmp_path, inputs: list[dict[str, Any]], budget: dict[str, Any] | None = None):
    """Run the test agent live on ``likes-red`` through the runtime into a ledger that requires a
    person's decision behind every approval; pat@acme.test approves through the platform."""
    ledger = make_ledger(tmp_path / "ledger.db", clock=FakeClock(), approval_decisions="person")
    with StandInApprover(ledger, "acme", "pat@acme.test", _approve), \
            embedded_runtime(ledger, "acme", clock=FakeClock(), event_ids=seq_event_id, models=_models(),
                             model="likes-red", approval_timeout_s=5) as rt:
        for i, inp in enumerate(inputs):
            rt.run(_spec(), inp, run_id=f"run-{i}", budget=budget)
    return ledger, load_runs(ledger.store, workflow="wf")


def test_what_if_answers_matching_tool_calls_from_the_recording_without_calling_live_tools(tmp_path):
    ledger, runs = _record(tmp_path, [{"id": 1}, {"id": 3}])  # red: both write live
    CALLS.live.clear()
    report = run_replay(runs, _spec(), ReplayConfig("w1", "t", candidate_model="likes-red"), _models(),
                        ledger=ledger)
    assert CALLS.live == []
    assert [r["status"] for r in report["runs"]] == ["unchanged", "unchanged"]
    assert report["summary"]["outcome_change_rate"] == Decimal(0)


def test_a_diverging_write_without_simulator_stops_the_run_and_is_never_called(tmp_path):
    _ledger, runs = _record(tmp_path, [{"id": 2}])  # blue: recorded run did not write
    CALLS.live.clear()
    result, events = replay_one(runs[0], _spec(), ReplayConfig("w2", "t", candidate_model="likes-blue"),
                                _models())
    assert CALLS.live == []
    assert result.status == "stopped"
    assert result.after.outcome == "cancelled"
    assert result.first_divergence == {
        "seq": 5, "kind": "tool", "expected": None, "actual": {"tool": "write", "args": {"id": 2}},
    }
    assert "no simulator" in events[-1]["data"]["error"]


def test_a_diverging_tool_with_a_simulator_continues_against_the_simulator(tmp_path):
    _ledger, runs = _record(tmp_path, [{"id": 2}])
    CALLS.live.clear()
    result, events = replay_one(runs[0], _spec(with_write_simulator=True),
                                ReplayConfig("w3", "t", candidate_model="likes-blue"), _models())
    assert CALLS.live == []
    assert result.status == "diverged"
    assert result.after.outcome == "succeeded"
    written = [e for e in events if e["type"] == "tool.called" and e["data"]["tool"] == "write"]
    assert written[0]["data"]["result"] == {"written": "dry-run"}


def test_an_approval_the_recording_never_asked_for_is_reported_and_escalates(tmp_path):
    _ledger, runs = _record(tmp_path, [{"id": 2, "big": True}])
    result, _ = replay_one(runs[0], _spec(with_write_simulator=True),
                           ReplayConfig("w4", "t", candidate_model="likes-blue"), _models())
    assert result.approvals_now_required == ["write 2"]
    assert result.after.outcome == "escalated"
    assert result.after.result == {"pending_approval": "w4.run-0/approval-4"}
    assert result.before.outcome == "succeeded"


def test_a_recorded_approval_is_reused_by_a_what_if_replay(tmp_path):
    _ledger, runs = _record(tmp_path, [{"id": 1, "big": True}])
    result, events = replay_one(runs[0], _spec(), ReplayConfig("w5", "t", candidate_model="likes-red"),
                                _models())
    assert result.approvals_now_required == []
    assert result.status == "unchanged"
    decided = [e["data"] for e in events if e["type"] == "approval.decided"]
    assert [(d["by"], d["approval_id"], d["replayed_from"]) for d in decided] == [
        ("pat@acme.test", "w5.run-0/approval-4", "run-0/approval-4")]


def test_a_candidate_prompt_reaches_the_model_and_is_named_in_the_labels(tmp_path):
    _ledger, runs = _record(tmp_path, [{"id": 1}])
    spec = _spec().with_prompts({"ask": "Say yes if blue."})
    _result, events = replay_one(runs[0], spec, ReplayConfig("w6", "t"), _models())
    request = next(e for e in events if e["type"] == "model.called")["data"]["request"]
    assert request["messages"][0]["content"].startswith("Say yes if blue.")
    labels = events[0]["data"]["labels"]
    assert labels["replay.mode"] == "what-if"
    assert labels["replay.candidate"].startswith("prompt.ask=sha256:")


def test_an_unknown_prompt_or_model_is_a_clear_error():
    with pytest.raises(PromptError, match="no prompt named 'nope'"):
        _spec().with_prompts({"nope": "x"})
    with pytest.raises(UnknownModelError, match="gpt-9"):
        ModelRegistry().get("gpt-9")


def test_the_same_replay_twice_gives_identical_results_and_recorded_events(tmp_path):
    inputs = [{"id": i, "big": i % 3 == 0} for i in range(30)]
    _ledger, runs = _record(tmp_path, inputs)
    outs = []
    for n, workers in enumerate((1, 4)):
        target = make_ledger(tmp_path / f"replay-{n}.db", clock=FakeClock())
        report = run_replay(runs, _spec(with_write_simulator=True),
                            ReplayConfig("same", "t", candidate_model="likes-blue", workers=workers, chunk=7),
                            _models(), ledger=target)
        events = [e.data for e in target.store.entries()]
        outs.append((report, events))
    (r1, e1), (r2, e2) = outs
    assert r1 == r2
    assert e1 == e2
    assert len(e1) > 100


def test_the_release_gate_reports_each_threshold_crossed(tmp_path):
    _ledger, runs = _record(tmp_path, [{"id": i} for i in range(10)])
    gate = Gate(Decimal("0.1"), Decimal("0"), Decimal("0"))
    report = run_replay(runs, _spec(with_write_simulator=True),
                        ReplayConfig("g", "t", candidate_model="likes-blue", gate=gate), _models())
    assert report["summary"]["outcome_change_rate"] == Decimal(1)
    assert not report["gate"]["passed"]
    assert any("outcome change rate 1.000000 is over the limit 0.1" in f for f in report["gate"]["failures"])
    assert any(f.startswith("cost increase") for f in report["gate"]["failures"])
    lenient = Gate(Decimal("1"), None, None)
    assert lenient.failures(report["summary"]) == []


def test_estimate_prices_recorded_tokens_at_the_candidate_price_exactly(tmp_path):
    _ledger, runs = _record(tmp_path, [{"id": 1}, {"id": 2}])
    prices = _models().prices
    est = estimate(runs, "sim-large-v2", prices)
    assert est["input_tokens"] == 20 and est["output_tokens"] == 2
    assert est["cost_estimated_usd"] == (Decimal("2.50") * 20 + Decimal("10.00") * 2) / 1_000_000
    assert est["cost_before_usd"] == (Decimal("0.15") * 20 + Decimal("0.60") * 2) / 1_000_000


def test_a_budget_breach_ends_the_run_cancelled_with_a_budget_event(tmp_path):
    ledger, runs = _record(tmp_path, [{"id": 1}], budget={"max_model_calls": 0})
    types = [e["type"] for e in runs[0].events]
    assert types[-2:] == ["budget.exceeded", "run.completed"]
    assert runs[0].completed == {"outcome": "cancelled", "result": {"budget_exceeded": "model_calls"},
                                 "error": "budget model_calls exceeded: 1 > 0"}
    assert ledger.store.size() == len(types)


def test_simulated_models_depend_only_on_the_request_and_their_name():
    req = ChatRequest("x", ({"role": "user", "content": "a refund please\nCHOOSE: refund | billing"},))
    small, large = SIMULATED["sim-small-v1"], SIMULATED["sim-large-v2"]
    assert small.complete(req) == small.complete(req)
    assert large.complete(req).content in ("refund", "billing")
    other = ChatRequest("x", ({"role": "user", "content": "hello there"},))
    assert small.complete(other).content != large.complete(other).content


def test_the_triage_example_replays_against_a_larger_model(tmp_path):
    ledger = make_ledger(tmp_path / "ledger.db")
    from examples import triage

    record_examples(ledger, "acme", "examples.triage:triage", triage.inputs(20), prefix="t")
    runs = load_runs(ledger.store, workflow="ticket-triage")
    agent_spec = load_agent("examples.triage:triage")
    report = run_replay(runs, agent_spec, ReplayConfig("big", "t", candidate_model="sim-large-v2"),
                        ModelRegistry(), ledger=ledger)
    after = report["summary"]["after"]
    assert report["summary"]["runs"] == 20
    assert after["cost_usd"] > report["summary"]["before"]["cost_usd"]
    assert report["recorded"]["quarantined"] == 0
    assert all(isinstance(r, RecordedRun) for r in runs)
