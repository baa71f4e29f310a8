"""Blocked actions in what-if policy replay: ``policy.evaluated`` keeps the arguments of an action
the policy did not allow, and the what-if asks a candidate about it from them (budget used at that
point, a change as proposed, a tool's side effect from the runs), or says why it cannot."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from domain.errors import ContractError
from domain.origins import PRODUCTION
from replay.history import RecordedRun
from replay.policy_replay import PolicyGate, run_actions, tool_side_effects, what_if_policy
from tachograph.contract.canonical import dumps, parse_event
from tachograph.policy import PolicyDecision
from tests.factories import event

DENIED = {"policy": "tachograph/decision", "action": "refund", "decision": "deny",
          "reason": "refund of 5000 is above the limit of 1000", "revision": "r1",
          "decision_id": "d-1", "arguments": {"order": "o-9", "amount": 5000}}


def test_policy_evaluated_takes_an_arguments_object_and_nothing_else():
    parse_event(dumps(event(seq=1, etype="policy.evaluated", data=DENIED)))
    without = {k: v for k, v in DENIED.items() if k != "arguments"}
    parse_event(dumps(event(seq=1, etype="policy.evaluated", data=without)))  # still optional
    for bad in ([1, 2], "amount=5000", 5000):
        with pytest.raises(ContractError) as info:
            parse_event(dumps(event(seq=1, etype="policy.evaluated", data={**DENIED, "arguments": bad})))
        assert any(path == "data.arguments" for path, _ in info.value.problems), info.value.problems


def _run(run_id: str, *steps: tuple[str, dict[str, Any]], workspace: str = "acme") -> RecordedRun:
    started = ("run.started", {"workflow": "refunds", "mode": "execute", "risk_tier": "low",
                               "budget": {"max_model_calls": 5}})
    events = [event(run_id, n, t, d, workspace=workspace) for n, (t, d) in enumerate([started, *steps])]
    return RecordedRun(workspace, run_id, events, source_kind="agent")


def _model_call(tokens: int) -> tuple[str, dict[str, Any]]:
    return ("model.called", {"call_id": "m", "provider": "p", "model": "m", "input_tokens": tokens,
                             "output_tokens": 0, "cost_usd": "0.01", "latency_ms": 1})


def _tool(name: str, args: dict[str, Any], side_effect: str) -> tuple[str, dict[str, Any]]:
    return ("tool.called", {"call_id": "t", "tool": name, "args": args, "status": "ok",
                            "latency_ms": 1, "side_effect": side_effect})


def _policy(action: str, decision: str, arguments: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {"policy": "tachograph/decision", "action": action, "decision": decision,
                            "reason": decision, "revision": "r1"}
    if arguments is not None:
        data["arguments"] = dict(arguments)
    return ("policy.evaluated", data)


def _completed() -> tuple[str, dict[str, Any]]:
    return ("run.completed", {"outcome": "escalated"})


def test_a_denied_tool_call_is_asked_again_with_its_arguments_and_the_budget_used_then():
    run = _run("r-denied", _model_call(100), _policy("lookup", "allow"), _tool("lookup", {"order": "o-9"}, "read"),
               _model_call(50), _policy("refund", "deny", {"order": "o-9", "amount": 5000}), _completed())
    found = run_actions(run, {("acme", "refund"): "write"})
    assert found.blocked == []
    lookup, refund = found.actions
    assert (lookup.name, lookup.ran, refund.name, refund.ran) == ("lookup", True, "refund", False)
    assert (refund.seq, refund.kind, refund.recorded, refund.recorded_revision) == (5, "tool", "deny", "r1")
    assert refund.input["arguments"] == {"order": "o-9", "amount": 5000}
    assert refund.input["side_effect"] == "write"
    assert refund.input["budget"] == {"limits": {"max_model_calls": 5},
                                      "used": {"model_calls": 2, "tokens": 150, "cost_usd": Decimal("0.02")}}


def test_a_rejected_change_is_asked_again_as_the_change_it_proposed():
    change = {"change_id": "change-1", "target": "price:sku-1", "before": {"price": "10"},
              "after": {"price": "12"}, "reversible": True}
    run = _run("r-change", ("change.proposed", change), _policy("price:sku-1", "require_approval", change),
               ("approval.requested", {"approval_id": "r-change/approval-1", "summary": "s", "risk": "low",
                                       "change_id": "change-1"}),
               ("approval.decided", {"approval_id": "r-change/approval-1", "decision": "rejected", "by": "pat"}),
               _completed())
    (action,) = run_actions(run).actions
    assert (action.kind, action.name, action.recorded, action.ran) == ("change", "price:sku-1", "require_approval", False)
    assert action.input["target"] == "price:sku-1" and action.input["arguments"] == change
    assert action.input["side_effect"] == "write"


def test_an_applied_change_is_asked_with_the_change_it_proposed_as_the_runtime_does():
    change = {"change_id": "change-1", "target": "price:sku-1", "before": {"price": "10"},
              "after": {"price": "12"}, "reversible": True}
    run = _run("r-applied", ("change.proposed", change), _policy("price:sku-1", "allow"),
               ("change.applied", {"change_id": "change-1"}), _completed())
    (action,) = run_actions(run).actions
    assert (action.kind, action.ran, action.input["arguments"]) == ("change", True, change)


def test_blocked_actions_that_cannot_be_asked_again_say_why():
    run = _run("r-old", _policy("refund", "deny"),  # recorded before arguments (or by agent code)
               _policy("wire", "deny", {"amount": 1}),  # a tool that never ran anywhere
               _completed())
    found = run_actions(run, tool_side_effects([run]))
    assert found.actions == []
    assert [(b["seq"], b["action"], b["decision"]) for b in found.blocked] == [(1, "refund", "deny"), (2, "wire", "deny")]
    assert "no arguments recorded" in found.blocked[0]["why"]
    assert "side effect of tool 'wire' is unknown" in found.blocked[1]["why"]


def test_an_approved_action_is_judged_once_as_the_call_that_ran():
    run = _run("r-approved", _policy("refund", "require_approval", {"order": "o-3", "amount": 300}),
               ("approval.requested", {"approval_id": "r-approved/approval-1", "summary": "s", "risk": "low"}),
               ("approval.decided", {"approval_id": "r-approved/approval-1", "decision": "approved", "by": "pat"}),
               _tool("refund", {"order": "o-3", "amount": 300}, "write"), _completed())
    found = run_actions(run)
    assert [(a.name, a.recorded, a.ran) for a in found.actions] == [("refund", "require_approval", True)]
    assert found.blocked == []


def test_a_decision_agent_code_recorded_before_the_action_ran_is_not_a_blocked_action():
    """The invoices example records its own require_approval on erp.post, gets a person's approval,
    then the runtime asks OPA (allow) and the posting runs: nothing was blocked."""
    own = ("policy.evaluated", {"policy": "ap.posting", "action": "erp.post",
                                "decision": "require_approval", "reason": "amount 900 vs limit 500"})
    run = _run("r-own", own,
               ("approval.requested", {"approval_id": "r-own/approval-1", "summary": "s", "risk": "low"}),
               ("approval.decided", {"approval_id": "r-own/approval-1", "decision": "approved", "by": "pat"}),
               _policy("erp.post", "allow"), _tool("erp.post", {"invoice": "i-1"}, "write"), _completed())
    found = run_actions(run)
    assert [(a.name, a.recorded, a.ran) for a in found.actions] == [("erp.post", "allow", True)]
    assert found.blocked == []


def _lenient(input: Mapping[str, Any]) -> PolicyDecision:
    """A candidate allowing refunds up to 10000 (deny above)."""
    amount = int(input["arguments"].get("amount", 0))
    return PolicyDecision("deny" if amount > 10000 else "allow", "lenient", None, "r2")


def test_what_if_reports_a_denied_call_newly_allowed_using_side_effects_from_other_runs():
    ran = _run("r-ran", _tool("refund", {"order": "o-1", "amount": 40}, "write"), ("run.completed", {"outcome": "succeeded"}))
    denied = _run("r-denied", _policy("refund", "deny", {"order": "o-9", "amount": 5000}), _completed())
    elsewhere = _run("r-other-ws", _policy("refund", "deny", {"order": "o-9", "amount": 5000}), _completed(),
                     workspace="other")
    assert ran.origin == PRODUCTION
    report = what_if_policy([ran, denied, elsewhere], _lenient, replay_id="x", created="t", candidate="c",
                            gate=PolicyGate())
    s = report["summary"]
    assert (s["evaluated"], s["new_allows"], s["unchanged"], s["not_reevaluated"]) == (2, 1, 1, 1)
    per_run = {r["run_id"]: r for r in report["runs"]}
    (change,) = per_run["r-denied"]["changed"]
    assert (change["before"], change["after"], change["ran"], change["seq"]) == ("deny", "allow", False, 1)
    assert change["arguments"] == {"order": "o-9", "amount": 5000}
    # another workspace's tools say nothing about this one's
    assert "unknown" in per_run["r-other-ws"]["not_reevaluated_actions"][0]["why"]
