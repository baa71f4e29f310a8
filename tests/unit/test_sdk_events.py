"""The publisher SDK records contract events with injected ids and clock (through a real ledger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from domain.errors import ContractError, RunRuleError
from ingest.errors import DeliveryError, RunClosedError
from ingest.sdk import Publisher
from ingest.simulate import SeqIds, SimClock
from tachograph.transports import CollectingTransport, LedgerTransport
from tachograph.contract.canonical import loads
from tests.factories import make_ledger, verify_ledger

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _publisher(transport, clock=None, ids=None) -> Publisher:
    return Publisher(
        transport,
        workspace="acme",
        agent_id="triage-agent",
        agent_version="2.4.0",
        clock=clock or SimClock(START),
        ids=ids or SeqIds("id"),
    )


def _events(ledger, ws="acme", run="id-00000001"):
    return [loads(row.data)["event"] for row in ledger.store.run_entries(ws, run)]


def test_a_run_is_recorded_with_contiguous_seq_injected_ids_and_clock_times(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    clock = SimClock(START)
    pub = _publisher(LedgerTransport(ledger), clock)
    with pub.run("ticket-triage", risk_tier="medium", input={"ticket": "T-1"}) as run:
        clock.advance(1500)
        run.model_call(provider="openai", model="gpt-4.1-mini", input_tokens=900,
                       output_tokens=120, cost_usd=Decimal("0.000552"), latency_ms=640)
        clock.advance(250)
        rows = run.tool_call("crm.lookup", {"id": 42}, fn=lambda id: {"rows": id // 21})
        assert rows == {"rows": 2}
    events = _events(ledger)
    assert [e["seq"] for e in events] == [0, 1, 2, 3]
    assert [e["type"] for e in events] == ["run.started", "model.called", "tool.called", "run.completed"]
    assert [e["event_id"] for e in events] == ["id-00000002", "id-00000003", "id-00000004", "id-00000005"]
    assert [e["time"] for e in events] == [
        "2026-03-01T09:00:00.000Z", "2026-03-01T09:00:01.500Z",
        "2026-03-01T09:00:01.750Z", "2026-03-01T09:00:01.750Z",
    ]
    assert events[0]["agent"] == {"id": "triage-agent", "version": "2.4.0"}
    assert events[1]["data"]["cost_usd"] == Decimal("0.000552")
    assert events[3]["data"] == {"outcome": "succeeded"}
    ledger.checkpoint(force=True)
    result = verify_ledger(ledger)
    assert (result.ok, result.entries) == (True, 4), result.reason


def test_an_exception_in_the_run_block_records_a_failed_outcome_and_propagates(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    pub = _publisher(LedgerTransport(ledger))
    with pytest.raises(ZeroDivisionError), pub.run("ticket-triage"):
        1 / 0
    events = _events(ledger)
    assert events[-1]["type"] == "run.completed"
    assert events[-1]["data"]["outcome"] == "failed"
    assert "ZeroDivisionError" in events[-1]["data"]["error"]


def test_a_failing_tool_is_recorded_as_an_error_and_its_exception_reaches_the_agent(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    pub = _publisher(LedgerTransport(ledger))

    def boom(**_):
        raise TimeoutError("crm timed out")

    with pub.run("ticket-triage") as run:
        with pytest.raises(TimeoutError):
            run.tool_call("crm.lookup", {"id": 1}, fn=boom)
        run.complete("escalated")
    tool = _events(ledger)[1]
    assert tool["data"]["status"] == "error"
    assert tool["data"]["error"] == "TimeoutError: crm timed out"
    assert _events(ledger)[-1]["data"]["outcome"] == "escalated"


def test_bad_input_from_the_agent_raises_a_contract_error_naming_the_field_and_sends_nothing():
    transport = CollectingTransport()
    pub = _publisher(transport)
    with pub.run("ticket-triage") as run:
        with pytest.raises(ContractError, match="input_tokens"):
            run.model_call(provider="openai", model="m", input_tokens=-1, output_tokens=1,
                           cost_usd="0.1", latency_ms=1)
        with pytest.raises(TypeError, match="float"):
            run.model_call(provider="openai", model="m", input_tokens=1, output_tokens=1,
                           cost_usd=0.1, latency_ms=1)  # type: ignore[arg-type]
    types = [loads(v)["type"] for v in transport.values()]
    assert types == ["run.started", "run.completed"]
    assert [loads(v)["seq"] for v in transport.values()] == [0, 1]


def test_run_rules_are_enforced_before_sending_and_the_change_function_never_runs():
    transport = CollectingTransport()
    pub = _publisher(transport)
    applied = []
    with pub.run("invoice-matching") as run:
        run.policy("ap.writes", "erp.post", "require_approval", "needs a human")
        cid = run.propose_change("erp.post", {"amount": 0}, {"amount": 10})
        with pytest.raises(RunRuleError, match="required approval"):
            run.apply_change(cid, fn=lambda: applied.append(cid))
        with pytest.raises(RunRuleError, match="never requested"):
            run.decide_approval("nope", "approved", "alice@acme.test")
        aid = run.request_approval("post 10", "high", change_id=cid)
        assert run.decide_approval(aid, "approved", "alice@acme.test")
        run.apply_change(cid, fn=lambda: applied.append(cid))
    assert applied == [cid]
    types = [loads(v)["type"] for v in transport.values()]
    assert types == ["run.started", "policy.evaluated", "change.proposed", "approval.requested",
                     "approval.decided", "change.applied", "run.completed"]


def test_nothing_but_feedback_may_follow_completion():
    transport = CollectingTransport()
    pub = _publisher(transport)
    with pub.run("ticket-triage") as run:
        run.complete("succeeded")
        with pytest.raises(RunClosedError):
            run.policy("p", "a", "allow", "ok")
    run.feedback(True, "carol@acme.test")
    assert [loads(v)["type"] for v in transport.values()][-2:] == ["run.completed", "feedback.recorded"]


def test_dry_run_records_mode_dry_run_and_never_executes_tools_or_changes(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    pub = _publisher(LedgerTransport(ledger))
    executed = []
    with pub.run("invoice-matching", dry_run=True) as run:
        assert run.dry_run
        out = run.tool_call("erp.invoice", {"id": 7}, fn=lambda id: executed.append(id))
        cid = run.propose_change("erp.post", {"amount": 0}, {"amount": 10})
        run.apply_change(cid, fn=lambda: executed.append("change"))
    assert executed == []
    assert out == {"dry_run": True, "executed": False}
    events = _events(ledger)
    assert events[0]["data"]["mode"] == "dry_run"
    assert events[1]["data"]["result"] == {"dry_run": True, "executed": False}
    assert [e["type"] for e in events][-2:] == ["change.applied", "run.completed"]


def test_a_ledger_transport_reports_an_event_the_ledger_quarantined_as_a_delivery_error(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    # two publishers whose id factories collide: the second run's events reuse event ids
    pub1 = _publisher(LedgerTransport(ledger), ids=SeqIds("same"))
    pub2 = _publisher(LedgerTransport(ledger), ids=SeqIds("same"))
    with pub1.run("ticket-triage", run_id="run-a"):
        pass
    with pytest.raises(DeliveryError, match="conflict"), pub2.run("ticket-triage", run_id="run-b"):
        pass
    assert ledger.store.quarantine_count() == 2
    assert [e["event_id"] for e in _events(ledger, run="run-a")] == ["same-00000001", "same-00000002"]


def test_the_clock_must_be_timezone_aware():
    pub = _publisher(CollectingTransport(), clock=lambda: datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"), pub.run("ticket-triage"):
        pass


def test_resending_the_same_run_is_absorbed_as_duplicates(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    transport = CollectingTransport()
    with _publisher(transport).run("ticket-triage") as run:
        run.policy("p", "a", "allow", "ok")
    sink = LedgerTransport(ledger, batch_size=100)
    for _ in range(2):  # a producer retry re-sends identical bytes
        for key, eid, value in transport.sent:
            sink.send(key, eid, value)
        sink.flush()
    assert (sink.accepted, sink.duplicates) == (3, 3)
    assert ledger.store.size() == 3


def test_times_follow_the_injected_clock_exactly():
    clock = SimClock(START)
    transport = CollectingTransport()
    with _publisher(transport, clock).run("t") as run:
        clock.advance(int(timedelta(hours=1).total_seconds() * 1000))
        run.policy("p", "a", "allow", "ok")
    assert [loads(v)["time"] for v in transport.values()] == [
        "2026-03-01T09:00:00.000Z", "2026-03-01T10:00:00.000Z", "2026-03-01T10:00:00.000Z"]
