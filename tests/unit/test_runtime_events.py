"""The agent runtime builds contract events with injected ids and clock, checks them before they
leave, and records what agent code and its tools did (through a real ledger)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from domain.errors import RunRuleError
from ingest.embedded import LedgerTransport
from tachograph.contract.canonical import loads
from tachograph.errors import DeliveryError, ToolFailed
from tachograph.runtime import Runtime
from tachograph.tools import ToolRegistry
from tachograph.transports import CollectingTransport
from tests.factories import FakeClock, make_ledger, verify_ledger
from tests.unit.runtime_support import MODEL, START, FixedModel, agent, events, models, runtime


@pytest.fixture
def ledger(tmp_path):
    return make_ledger(tmp_path / "l.db")


def crm_tools(fail: bool = False) -> ToolRegistry:
    tools = ToolRegistry()

    def lookup(args):
        if fail:
            raise TimeoutError("crm timed out")
        return {"rows": args["id"] // 21}

    tools.register("crm.lookup", lookup, "read")
    return tools


def test_a_run_is_recorded_with_contiguous_seq_injected_ids_and_clock_times(ledger):
    clock = FakeClock(START)

    def triage(ctx, input):
        clock.advance(1.5)
        reply = ctx.llm("triage " + input["ticket"])
        clock.advance(0.25)
        rows = ctx.tool("crm.lookup", {"id": 42})
        return {"reply": reply.content, "rows": rows["rows"]}

    with runtime(ledger, clock=clock, event_ids=lambda run, seq: f"{run}.e{seq}") as rt:
        result = rt.run(agent(triage, crm_tools(), workflow="ticket-triage",
                              identity={"id": "triage-agent", "version": "2.4.0"}),
                        {"ticket": "T-1"}, risk_tier="medium")
    stored = events(ledger, "run-1")
    assert result.run_id == "run-1" and result.events == stored
    assert [e["seq"] for e in stored] == [0, 1, 2, 3]
    assert [e["type"] for e in stored] == ["run.started", "model.called", "tool.called", "run.completed"]
    assert [e["event_id"] for e in stored] == ["run-1.e0", "run-1.e1", "run-1.e2", "run-1.e3"]
    assert [e["time"] for e in stored] == [
        "2026-03-01T09:00:00.000000Z", "2026-03-01T09:00:01.500000Z",
        "2026-03-01T09:00:01.750000Z", "2026-03-01T09:00:01.750000Z"]
    assert {e["trace_id"] for e in stored} == {"0af7651916cd43dd8448eb211c80319c"}
    assert stored[0]["agent"] == {"id": "triage-agent", "version": "2.4.0"}
    assert stored[0]["data"] == {"workflow": "ticket-triage", "mode": "execute", "risk_tier": "medium",
                                 "input": {"ticket": "T-1"},
                                 "entry_point": "tests.unit.runtime_support:triage"}
    assert Decimal(stored[1]["data"]["cost_usd"]) == Decimal("0.01") and stored[1]["data"]["model"] == MODEL
    assert stored[2]["data"]["result"] == {"rows": 2}
    assert stored[3]["data"] == {"outcome": "succeeded", "result": {"reply": "ok", "rows": 2}}
    ledger.checkpoint(force=True)
    result = verify_ledger(ledger)
    assert (result.ok, result.entries) == (True, 4), result.reason


def test_an_error_in_agent_code_ends_the_run_failed_with_the_error(ledger):
    def broken(ctx, input):
        ctx.policy("p", "a", "allow", "ok")
        return {"ratio": 1 / 0}

    with runtime(ledger) as rt:
        result = rt.run(agent(broken))
    assert (result.outcome, result.error) == ("failed", "ZeroDivisionError: division by zero")
    assert events(ledger, result.run_id)[-1]["data"] == {"outcome": "failed",
                                                          "error": "ZeroDivisionError: division by zero"}


def test_a_failing_tool_is_recorded_as_an_error_and_reaches_the_agent_which_may_handle_it(ledger):
    def careful(ctx, input):
        try:
            ctx.tool("crm.lookup", {"id": 1})
        except ToolFailed as e:
            return {"outcome": "escalated", "why": e.error}
        return {}

    def careless(ctx, input):
        ctx.tool("crm.lookup", {"id": 1})
        return {}

    with runtime(ledger) as rt:
        handled = rt.run(agent(careful, crm_tools(fail=True)))
        unhandled = rt.run(agent(careless, crm_tools(fail=True)))
    tool = events(ledger, handled.run_id)[1]["data"]
    assert (tool["status"], tool["error"], tool["side_effect"]) == ("error", "TimeoutError: crm timed out", "read")
    assert (handled.outcome, handled.result) == ("escalated", {"outcome": "escalated",
                                                               "why": "TimeoutError: crm timed out"})
    assert unhandled.outcome == "failed"
    assert unhandled.error == "tool 'crm.lookup' failed: TimeoutError: crm timed out"


def test_bad_input_from_agent_code_is_refused_naming_the_field_and_never_sent():
    sent = CollectingTransport()

    def sloppy(ctx, input):
        ctx.policy("refunds", "refund.issue", "maybe", "unsure")
        return {}

    rt = Runtime(workspace="acme", transport=sent, models=models(), model=MODEL, clock=FakeClock(START))
    result = rt.run(agent(sloppy))
    assert result.outcome == "failed" and "ContractError" in result.error and "decision" in result.error
    assert [loads(v)["type"] for v in sent.values()] == ["run.started", "run.completed"]
    assert [loads(v)["seq"] for v in sent.values()] == [0, 1]


def test_run_rules_are_checked_before_a_change_is_applied_and_its_side_effect_never_runs():
    sent = CollectingTransport()
    applied: list[str] = []
    refused: list[str] = []

    def eager(ctx, input):
        ctx.policy("ap.writes", "erp.post", "require_approval", "needs a person")
        change = ctx.propose_change("erp.post", {"status": "open"}, {"status": "posted"})
        try:
            ctx.apply_change(change, fn=lambda: applied.append(change))
        except RunRuleError as e:
            refused.append(str(e))
        return {"outcome": "escalated"}

    rt = Runtime(workspace="acme", transport=sent, models=models(), model=MODEL, clock=FakeClock(START))
    result = rt.run(agent(eager))
    assert applied == [] and refused and "approval" in refused[0]
    assert result.outcome == "escalated"
    assert [loads(v)["type"] for v in sent.values()] == [
        "run.started", "policy.evaluated", "change.proposed", "run.completed"]


def test_feedback_follows_a_completed_run_and_only_where_the_run_is_live(ledger):
    with runtime(ledger) as rt:
        result = rt.run(agent(lambda ctx, input: {"done": True}))
        result.feedback(False, "carol@acme.test", "wrong category")
    stored = events(ledger, result.run_id)
    assert [e["type"] for e in stored][-2:] == ["run.completed", "feedback.recorded"]
    assert stored[-1]["data"] == {"accepted": False, "by": "carol@acme.test", "comment": "wrong category"}
    elsewhere = type(result)(result.run_id, result.outcome, result.result, None, result.events)
    with pytest.raises(RunRuleError, match="not live in this process"):
        elsewhere.feedback(True, "carol@acme.test")


def test_a_dry_run_records_mode_dry_run_and_never_executes_side_effects(ledger):
    executed: list[str] = []
    tools = ToolRegistry()
    tools.register("erp.invoice", lambda args: executed.append("read") or {"amount": "7"}, "read",
                   simulator=lambda args: {"amount": "7", "simulated": True})
    tools.register("erp.post", lambda args: executed.append("post"), "write")
    tools.register("kb.search", lambda args: {"hits": len(args["q"])}, "none")

    def poster(ctx, input):
        invoice = ctx.tool("erp.invoice", {"id": 7})
        posted = ctx.tool("erp.post", {"id": 7})
        hits = ctx.tool("kb.search", {"q": "abc"})
        change = ctx.propose_change("erp.post", {"status": "open"}, {"status": "posted"})
        ctx.apply_change(change, fn=lambda: executed.append("change"))
        return {"invoice": invoice, "posted": posted, "hits": hits}

    with runtime(ledger) as rt:
        result = rt.run(agent(poster, tools), mode="dry_run")
    assert executed == []
    assert result.result == {"invoice": {"amount": "7", "simulated": True},
                             "posted": {"dry_run": True, "executed": False}, "hits": {"hits": 3}}
    stored = events(ledger, result.run_id)
    assert stored[0]["data"]["mode"] == "dry_run"
    assert [e["type"] for e in stored][-2:] == ["change.applied", "run.completed"]


def test_an_event_the_ledger_quarantines_is_a_delivery_error(ledger):
    same_ids = {"event_ids": lambda run, seq: f"same-{seq}"}  # two runs whose event ids collide
    with runtime(ledger, **same_ids) as rt:
        first = rt.run(agent(lambda ctx, input: {}), run_id="run-a")
    with runtime(ledger, **same_ids) as rt, pytest.raises(DeliveryError, match="conflict"):
        rt.run(agent(lambda ctx, input: {}), run_id="run-b")
    assert first.outcome == "succeeded" and ledger.store.quarantine_count() == 2
    assert [e["event_id"] for e in events(ledger, "run-a")] == ["same-0", "same-1"]
    assert events(ledger, "run-b") == []


def test_resending_the_same_run_is_absorbed_as_duplicates(ledger):
    sent = CollectingTransport()

    def checks(ctx, input):
        ctx.policy("p", "a", "allow", "ok")
        return {}

    Runtime(workspace="acme", transport=sent, models=models(), model=MODEL, clock=FakeClock(START)).run(agent(checks))
    sink = LedgerTransport(ledger)
    for _ in range(2):  # a producer retry re-sends identical bytes
        for key, eid, value in sent.sent:
            sink.send(key, eid, value)
        sink.flush()
    assert (sink.accepted, sink.duplicates) == (3, 3)
    assert ledger.store.size() == 3


def test_event_times_follow_the_injected_clock_exactly(ledger):
    clock = FakeClock(START)

    def slow(ctx, input: dict[str, Any]):
        clock.advance(3600)
        ctx.policy("p", "a", "allow", "ok")
        return {}

    with runtime(ledger, clock=clock, model=FixedModel()) as rt:
        result = rt.run(agent(slow))
    assert [e["time"] for e in events(ledger, result.run_id)] == [
        "2026-03-01T09:00:00.000000Z", "2026-03-01T10:00:00.000000Z", "2026-03-01T10:00:00.000000Z"]
