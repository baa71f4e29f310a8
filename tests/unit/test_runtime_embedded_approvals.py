"""An agent that asks a person waits in the runtime until a person's decision is recorded through
the platform (``record_decision``), then records it in its own run and goes on; an expired wait
takes the not-approved path (embedded: the ledger is the platform)."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from tachograph.runtime import Runtime
from tachograph.transports import CollectingTransport
from tests.factories import FakeClock, make_ledger, verify_ledger
from tests.unit.runtime_support import MODEL, START, PersonThread, agent, events, models, runtime


@pytest.fixture
def ledger(tmp_path):
    return make_ledger(tmp_path / "ledger.db", clock=time.time, approval_decisions="person")


def refund(ctx, input):
    ctx.policy("refunds", "refund.issue", "require_approval", "over 100")
    change = ctx.propose_change("refund.issue", {"refunded": "0"}, {"refunded": "250"}, reversible=False)
    if not ctx.request_approval("refund 250 USD on T-1", "medium", change, timeout=input.get("timeout")):
        return {"outcome": "escalated", "refund": "not approved"}
    ctx.apply_change(change)
    return {"refund": "issued"}


@pytest.mark.parametrize(("decision", "outcome"), [("approved", "succeeded"), ("rejected", "escalated")])
def test_a_waiting_agent_goes_on_with_the_persons_decision(ledger, decision, outcome):
    with PersonThread(ledger, decision, reason="checked") as person, runtime(ledger, monotonic=time.monotonic) as rt:
        result = rt.run(agent(refund), {}, run_id="r-wait")
    assert result.outcome == outcome
    stored = events(ledger, "r-wait")
    types = [e["type"] for e in stored]
    assert types[:4] == ["run.started", "policy.evaluated", "change.proposed", "approval.requested"]
    requested, decided = stored[3]["data"], stored[4]["data"]
    assert requested["approval_id"] == person.decided == "r-wait/approval-2"
    assert decided == {"approval_id": "r-wait/approval-2", "decision": decision,
                       "by": "Pat Approver (apikey:0f2ce1b41813)", "reason": "checked"}
    assert ("change.applied" in types) == (decision == "approved")
    assert ledger.store.quarantine_count() == 0  # the agent's approval.decided repeats the person's
    ledger.checkpoint(force=True)
    verified = verify_ledger(ledger)
    assert verified.ok, verified.reason


def test_an_approval_nobody_decides_in_time_expires_and_the_run_takes_its_not_approved_path(ledger):
    with runtime(ledger, monotonic=time.monotonic) as rt:
        t0 = time.monotonic()
        result = rt.run(agent(refund), {"timeout": 0.3}, run_id="r-expired")
    assert 0.3 <= time.monotonic() - t0 < 5
    assert (result.outcome, result.result) == ("escalated", {"outcome": "escalated", "refund": "not approved"})
    stored = events(ledger, "r-expired")
    assert [e["type"] for e in stored][-2:] == ["approval.requested", "run.completed"]
    assert stored[-2]["data"]["timeout_s"] == Decimal("0.3")


def test_asking_for_approval_without_a_platform_to_ask_ends_the_run_failed_saying_so():
    rt = Runtime(workspace="acme", transport=CollectingTransport(), models=models(), model=MODEL, clock=FakeClock(START))
    result = rt.run(agent(refund), {})
    assert result.outcome == "failed" and "no platform to ask" in (result.error or "")
