"""The runtime asks a real Open Policy Agent before every tool call and change, records each
answer (``policy.evaluated`` with the bundle revision and OPA's decision id) and enforces it:
allow, deny (the call does not happen; agent code sees ``PolicyDenied``), require approval (a
person decides through the platform). OPA stopped mid-run: write actions fail closed, reads
open, recorded either way. A fidelity replay reproduces the runs without asking OPA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from domain.approvals import ApprovalRow
from ingest.embedded import StandInApprover, embedded_runtime
from projections.projector import Projector, connect
from projections.reports import run_report
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from tachograph.agents import AgentSpec
from tachograph.errors import PolicyDenied
from tachograph.policy import OpaClient
from tachograph.tools import ToolRegistry
from tests.factories import make_ledger

pytestmark = pytest.mark.opa

POLICIES = Path(__file__).resolve().parents[1] / "policies"
REVISION = "refunds-r7"
ISSUED: list[dict[str, Any]] = []
TOOLS = ToolRegistry()
TOOLS.register("lookup", lambda a: {"order": a["order"], "paid": "5000"}, "read")
TOOLS.register("refund", lambda a: ISSUED.append(dict(a)) or {"refunded": a["amount"]}, "write",
               simulator=lambda a: {"refunded": a["amount"]})


def refunder(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Looks the order up, then refunds; a denial is handled (the run escalates)."""
    ctx.tool("lookup", {"order": input["order"]})
    try:
        done = ctx.tool("refund", {"order": input["order"], "amount": input["amount"]})
    except PolicyDenied as e:
        return {"outcome": "escalated", "denied": e.reason}
    return {"refunded": done["refunded"]}


AGENT = AgentSpec("tests.integration.test_runtime_policy:refunder", refunder, TOOLS, {}, "refunds",
                  {"id": "refund-agent", "version": "1.0.0"})


@pytest.fixture
def opa(opa_server, tmp_path: Path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(POLICIES / "refunds.rego", bundle / "refunds.rego")
    (bundle / ".manifest").write_text(json.dumps({"revision": REVISION, "roots": ["tachograph"]}))
    return opa_server(bundle=bundle)


def person(row: ApprovalRow) -> tuple[str, str | None] | None:
    """Approves refunds of 300, rejects the others."""
    return ("approved", None) if "300" in row.summary else ("rejected", "too much")


def policies(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == "policy.evaluated"]


def test_opa_decides_the_runtime_enforces_and_the_ledger_records_revision_and_decision_id(tmp_path, opa):
    ledger = make_ledger(tmp_path / "ledger.db", approval_decisions="person")
    ISSUED.clear()
    with StandInApprover(ledger, "acme", "Pat Approver", person), \
            embedded_runtime(ledger, "acme", policy=OpaClient(opa.url), approval_timeout_s=30) as rt:
        small = rt.run(AGENT, {"order": "o-1", "amount": 40})
        approved = rt.run(AGENT, {"order": "o-2", "amount": 300})
        rejected = rt.run(AGENT, {"order": "o-3", "amount": 500})
        denied = rt.run(AGENT, {"order": "o-4", "amount": 5000})

    assert [i["order"] for i in ISSUED] == ["o-1", "o-2"]  # denied and rejected refunds never ran
    assert (small.outcome, approved.outcome) == ("succeeded", "succeeded")
    assert rejected.outcome == denied.outcome == "escalated"
    assert "not approved by a person" in rejected.result["denied"]
    assert "above the limit of 1000" in denied.result["denied"]
    for result, decision in ((small, "allow"), (approved, "require_approval"),
                             (rejected, "require_approval"), (denied, "deny")):
        lookup, refund = policies(result.events)  # every tool call asked, whatever followed
        assert (lookup["action"], lookup["decision"]) == ("lookup", "allow")
        assert (refund["action"], refund["decision"]) == ("refund", decision)
        for p in (lookup, refund):
            assert p["revision"] == REVISION and len(p["decision_id"]) >= 16
            assert p["policy"] == "tachograph/decision"
        # an answer other than allow keeps the action's arguments (it may never run)
        assert "arguments" not in lookup
        if decision == "allow":
            assert "arguments" not in refund
        else:
            assert refund["arguments"] == {"order": result.events[0]["data"]["input"]["order"],
                                           "amount": result.events[0]["data"]["input"]["amount"]}
    types = [e["type"] for e in approved.events]
    assert types[types.index("policy.evaluated", 2):][:4] == [
        "policy.evaluated", "approval.requested", "approval.decided", "tool.called"]

    # a fidelity replay reproduces every run from its recording, without asking OPA
    opa.stop()
    report = run_replay(load_runs(ledger.store, workflow="refunds"), AGENT,
                        ReplayConfig("rp-policy", "2026-12-06T00:00:00Z"), _models(), ledger=ledger)
    assert report["summary"]["statuses"] == {"reproduced": 4}, [
        json.dumps(r.get("first_divergence"), default=str) for r in report["runs"]]
    # runs recorded before policy.evaluated kept arguments reproduce too (without them)
    older = load_runs(ledger.store, workflow="refunds")
    for run in older:
        for e in run.events:
            if e["type"] == "policy.evaluated":
                e["data"].pop("arguments", None)
    report = run_replay(older, AGENT, ReplayConfig("rp-policy-old", "2026-12-06T00:00:00Z"), _models())
    assert report["summary"]["statuses"] == {"reproduced": 4}, [
        json.dumps(r.get("first_divergence"), default=str) for r in report["runs"]]

    # violation rates by policy and revision count production runs only (not the 4 replays)
    con = connect(tmp_path / "analytics.duckdb")
    Projector(ledger.store, con).catch_up()
    rows = run_report(con, "violations", ["policy", "revision"]).records()
    assert [(r["policy"], r["revision"], r["runs"], r["runs_with_denial"], r["evaluations"], r["denials"],
             r["approvals_required"]) for r in rows] == [("tachograph/decision", REVISION, 4, 1, 8, 1, 2)]


def test_opa_stopped_mid_run_fails_write_actions_closed_and_reads_open(tmp_path, opa):
    ledger = make_ledger(tmp_path / "ledger.db", approval_decisions="person")
    ISSUED.clear()

    def lookup_then_refund(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
        ctx.tool("lookup", {"order": "o-9"})
        opa.stop()  # OPA goes away in the middle of the run
        ctx.tool("lookup", {"order": "o-9"})
        try:
            ctx.tool("refund", {"order": "o-9", "amount": 10})
        except PolicyDenied as e:
            return {"outcome": "escalated", "denied": e.reason}
        return {}

    agent = AgentSpec("x:lookup_then_refund", lookup_then_refund, TOOLS, {}, "refunds",
                      {"id": "refund-agent", "version": "1.0.0"})
    with embedded_runtime(ledger, "acme", policy=OpaClient(opa.url, timeout_s=1.0)) as rt:
        result = rt.run(agent, {})
    assert ISSUED == [] and result.outcome == "escalated"
    first, read, write = policies(result.events)
    assert (first["decision"], first["revision"]) == ("allow", REVISION)
    assert read["decision"] == "allow" and "fail open: allowed" in read["reason"]
    assert write["decision"] == "deny" and "fail closed: denied" in write["reason"]
    assert "revision" not in write and "decision_id" not in write  # nobody decided: recorded as such
    assert write["arguments"] == {"order": "o-9", "amount": 10} and "arguments" not in read
    assert "policy engine unavailable" in result.result["denied"]


def _models():
    from tachograph.models import ModelRegistry

    return ModelRegistry()
