"""What-if policy replay with a real OPA: runs recorded under the refunds policy (approval above
100, deny above 1000) are re-asked of a stricter candidate (approval above 50, deny above 500)
through ``tacho replay --policy`` (its own OPA sidecar) and ``--opa-url``; the gate fails on new
denials and passes when lenient; the same policy as a candidate changes nothing."""

from __future__ import annotations

import html
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from api.bootstrap import build_ledger
from api.settings import Settings
from domain.approvals import ApprovalRow
from ingest.embedded import StandInApprover, embedded_runtime
from replay.history import load_runs
from replay.policy_replay import PolicyGate, Threshold, run_actions, what_if_policy
from tachograph.agents import AgentSpec
from tachograph.errors import PolicyDenied
from tachograph.policy import OpaClient
from tachograph.tools import ToolRegistry
from tests.cli_support import tacho
from tests.integration.api_support import close_api, make_api
from tests.integration.test_console_replay_form import _sign_in

pytestmark = pytest.mark.opa

POLICIES = Path(__file__).resolve().parents[1] / "policies"
TOOLS = ToolRegistry()
TOOLS.register("lookup", lambda a: {"order": a["order"]}, "read")
TOOLS.register("refund", lambda a: {"refunded": a["amount"]}, "write")


def refunder(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Looks the order up, then refunds; a denial ends the run escalated."""
    ctx.tool("lookup", {"order": input["order"]})
    try:
        done = ctx.tool("refund", {"order": input["order"], "amount": input["amount"]})
    except PolicyDenied as e:
        return {"outcome": "escalated", "denied": e.reason}
    return {"refunded": done["refunded"]}


AGENT = AgentSpec("tests.integration.test_policy_whatif_replay:refunder", refunder, TOOLS, {},
                  "refunds", {"id": "refund-agent", "version": "1.0.0"})
AMOUNTS = {"o-40": 40, "o-60": 60, "o-300": 300, "o-800": 800, "o-700": 700, "o-5000": 5000}


def bundle(tmp: Path, name: str, revision: str, approval_above: int, deny_above: int) -> Path:
    """The refunds policy with other thresholds, as a bundle directory with a revision."""
    d = tmp / name
    d.mkdir()
    rego = (POLICIES / "refunds.rego").read_text()
    rego = rego.replace("approval_above := 100", f"approval_above := {approval_above}")
    rego = rego.replace("deny_above := 1000", f"deny_above := {deny_above}")
    (d / "refunds.rego").write_text(rego)
    (d / ".manifest").write_text(json.dumps({"revision": revision, "roots": ["tachograph"]}))
    return d


def person(row: ApprovalRow) -> tuple[str, str | None] | None:
    """Approves the refunds of 300 and 800, rejects the others."""
    return ("approved", None) if ("300" in row.summary or "800" in row.summary) else ("rejected", "no")


@pytest.fixture
def recorded(tmp_path, monkeypatch, opa_server, opa_bin) -> Path:
    """A data directory with six refund runs recorded under the original policy (r1)."""
    data = tmp_path / "data"
    monkeypatch.setenv("TACHO_DATA_DIR", str(data))
    monkeypatch.setenv("TACHO_OPA_BIN", str(opa_bin))
    original = opa_server(bundle=bundle(tmp_path, "original", "refunds-r1", 100, 1000))
    ledger = build_ledger(Settings())
    with StandInApprover(ledger, "acme", "Pat Approver", person), \
            embedded_runtime(ledger, "acme", policy=OpaClient(original.url), approval_timeout_s=30) as rt:
        for order, amount in AMOUNTS.items():
            rt.run(AGENT, {"order": order, "amount": amount})
    ledger.checkpoint(force=True)
    ledger.store.close()
    original.stop()
    return data


def test_stricter_candidate_reports_new_denials_and_approvals_and_gates(tmp_path, recorded):
    strict = bundle(tmp_path, "strict", "refunds-r2", 50, 500)
    out = tacho(recorded, "replay", "--policy", str(strict), "--workflow", "refunds",
                "--max-new-denials", "0", "--id", "rp-strict", "--json", check=False)
    assert out.returncode == 1, out.stderr  # the gate fails: actions newly denied
    report = json.loads(out.stdout)
    s = report["summary"]
    # 6 lookups + refunds of 40, 60, 300, 800 ran; 700 (rejected) and 5000 (denied) never did,
    # and are asked again from the arguments their policy.evaluated recorded
    assert (s["runs"], s["evaluated"], s["not_reevaluated"]) == (6, 12, 0)
    assert (s["new_denials"], s["new_approvals"], s["new_allows"], s["unchanged"]) == (2, 1, 0, 9)
    assert Decimal(s["new_denials_rate"]) == Decimal("0.1667")
    assert s["candidate_revisions"] == ["refunds-r2"]
    changed = {c["arguments"]["amount"]: (c["before"], c["after"], c["ran"])
               for r in report["runs"] for c in r["changed"]}
    assert changed == {60: ("allow", "require_approval", True), 800: ("require_approval", "deny", True),
                       700: ("require_approval", "deny", False)}
    assert report["gate"]["failures"] == ["new denials: 2 of 12 actions (0.1667) is over the limit 0"]
    per_run = {r["changed"][0]["arguments"]["order"]: r for r in report["runs"] if r["changed"]}
    assert per_run["o-800"]["new_denials"] == 1 and per_run["o-60"]["new_approvals"] == 1

    shown = tacho(recorded, "replay", "show", "rp-strict", "--json")
    assert json.loads(shown.stdout)["summary"] == s
    listed = {r["replay_id"]: r for r in json.loads(tacho(recorded, "replay", "list", "--json").stdout)}
    assert (listed["rp-strict"]["mode"], listed["rp-strict"]["passed"]) == ("policy", False)
    assert "rp-strict" in tacho(recorded, "replay", "list").stdout
    text = tacho(recorded, "replay", "show", "rp-strict").stdout
    assert "refund" in text and "require_approval → deny" in text and "gate failed" in text

    lenient = tacho(recorded, "replay", "--policy", str(strict), "--workflow", "refunds",
                    "--max-new-denials", "20%", "--max-new-approvals", "1", "--json")
    assert json.loads(lenient.stdout)["gate"]["passed"] is True
    tight_rate = tacho(recorded, "replay", "--policy", str(strict), "--workflow", "refunds",
                       "--max-new-approvals", "0.05", "--json", check=False)
    assert tight_rate.returncode == 1  # 1 of 12 = 8.3% is over 5%

    # the console lists the what-if and shows its changed decisions
    assert recorded == tmp_path / "data"
    a = make_api(tmp_path)
    try:
        _sign_in(a, "engineer")
        assert "rp-strict" in a.client.get("/console/replays").text
        page = html.unescape(a.client.get("/console/replays/rp-strict").text)
        assert "policy what-if" in page and "refunds-r2" in page and 'id="policy-changes"' in page
        assert "require_approval</td><td><b>deny</b>" in page and "allow</td><td><b>require_approval</b>" in page
    finally:
        close_api(a)


def test_a_denied_refund_is_recorded_with_its_arguments_and_re_asked_of_each_candidate(tmp_path, recorded):
    """The refund of 5000 the recorded policy denied never ran: its policy.evaluated keeps its
    arguments, so a more lenient candidate reports it newly allowed and a stricter one keeps it
    denied."""
    ledger = build_ledger(Settings())
    runs = {next(e["data"]["args"]["order"] for e in r.events if e["type"] == "tool.called"): r
            for r in load_runs(ledger.store, workflow="refunds")}
    ledger.store.close()
    evaluated = [e["data"] for e in runs["o-5000"].events if e["type"] == "policy.evaluated"]
    assert [(p["action"], p["decision"]) for p in evaluated] == [("lookup", "allow"), ("refund", "deny")]
    assert "arguments" not in evaluated[0]  # an allowed action's arguments are in its tool.called
    assert evaluated[1]["arguments"] == {"order": "o-5000", "amount": 5000}
    assert not any(e["type"] == "tool.called" and e["data"]["tool"] == "refund" for e in runs["o-5000"].events)
    rejected = [e["data"] for e in runs["o-700"].events if e["type"] == "policy.evaluated"][1]
    assert (rejected["decision"], rejected["arguments"]) == ("require_approval", {"order": "o-700", "amount": 700})

    def denied_refund(report: dict[str, Any]) -> dict[str, Any] | None:
        (run,) = [r for r in report["runs"] if r["run_id"] == runs["o-5000"].run_id]
        assert run["not_reevaluated"] == 0 and run["evaluated"] == 2
        return next((c for c in run["changed"] if c["name"] == "refund"), None)

    lenient = bundle(tmp_path, "lenient", "refunds-r3", 10000, 20000)
    out = tacho(recorded, "replay", "--policy", str(lenient), "--workflow", "refunds", "--json")
    report = json.loads(out.stdout)
    change = denied_refund(report)
    assert change is not None
    assert (change["before"], change["after"], change["ran"]) == ("deny", "allow", False)
    assert change["arguments"] == {"order": "o-5000", "amount": 5000}
    s = report["summary"]
    # 300, 800 (approved), 700 (rejected) and 5000 (denied) are all newly allowed
    assert (s["evaluated"], s["new_allows"], s["new_denials"], s["not_reevaluated"]) == (12, 4, 0, 0)

    strict = bundle(tmp_path, "strict", "refunds-r2", 50, 500)
    report = json.loads(tacho(recorded, "replay", "--policy", str(strict), "--workflow", "refunds", "--json",
                              check=False).stdout)
    assert denied_refund(report) is None  # still denied: unchanged


def test_identical_candidate_changes_nothing_through_a_running_opa(tmp_path, recorded, opa_server):
    same_dir = bundle(tmp_path, "same", "refunds-r1b", 100, 1000)
    same = opa_server(bundle=same_dir)
    out = tacho(recorded, "replay", "--policy", str(same_dir), "--opa-url", same.url,
                "--workflow", "refunds", "--max-new-denials", "0", "--max-new-approvals", "0", "--json")
    s = json.loads(out.stdout)["summary"]
    assert (s["evaluated"], s["unchanged"], s["new_denials"], s["new_approvals"], s["new_allows"]) == (12, 12, 0, 0, 0)
    # a single .rego file as the candidate works too (no bundle: no revision)
    single = tacho(recorded, "replay", "--policy", str(same_dir / "refunds.rego"), "--workflow", "refunds",
                   "--json")
    assert json.loads(single.stdout)["summary"]["unchanged"] == 12
    assert json.loads(single.stdout)["summary"]["candidate_revisions"] == []


def test_policy_input_is_rebuilt_as_the_runtime_sent_it(tmp_path, recorded, opa_server):
    """The rebuilt input of every action is the one the runtime asked at that point: a
    candidate answering from the input alone agrees with what was recorded (same thresholds)."""
    ledger = build_ledger(Settings())
    runs = load_runs(ledger.store, workflow="refunds")
    actions = [a for r in runs for a in run_actions(r).actions]
    refund = next(a for a in actions if a.name == "refund" and a.input["arguments"]["amount"] == 300)
    assert refund.input["workspace"] == "acme" and refund.input["workflow"] == "refunds"
    assert refund.input["agent"]["id"] == "refund-agent" and refund.input["side_effect"] == "write"
    assert refund.input["budget"]["used"] == {"model_calls": 0, "tokens": 0, "cost_usd": Decimal(0)}
    assert refund.recorded == "require_approval" and refund.recorded_revision == "refunds-r1"
    same = opa_server(bundle=bundle(tmp_path, "same2", "r", 100, 1000))
    with OpaClient(same.url) as client:
        report = what_if_policy(runs, client.decide, replay_id="x", created="t", candidate="same",
                                gate=PolicyGate(Threshold.parse("0", "--max-new-denials")))
    assert report["summary"]["unchanged"] == 12 and report["gate"]["passed"]
    ledger.store.close()


def test_bad_thresholds_and_a_broken_candidate_are_named_errors(tmp_path, recorded):
    out = tacho(recorded, "replay", "--policy", str(tmp_path), "--workflow", "refunds",
                "--max-new-denials", "lots", check=False)
    assert out.returncode != 0 and "--max-new-denials must be a count" in out.stderr
    broken = tmp_path / "broken.rego"
    broken.write_text("package tachograph\n\ndecision := {")
    out = tacho(recorded, "replay", "--policy", str(broken), "--workflow", "refunds", check=False)
    assert out.returncode == 2 and "could not load the candidate policy" in out.stderr
    out = tacho(recorded, "replay", "--policy", str(broken), "--workflow", "refunds",
                "--model", "simulated", check=False)
    assert out.returncode != 0 and "takes no --model" in out.stderr


def test_no_opa_binary_is_a_clear_error(tmp_path, recorded, monkeypatch):
    monkeypatch.setenv("TACHO_OPA_BIN", str(tmp_path / "no-opa-here"))
    out = tacho(recorded, "replay", "--policy", str(POLICIES / "refunds.rego"), "--workflow", "refunds",
                check=False)
    assert out.returncode == 2 and "is not an executable file" in out.stderr
    monkeypatch.delenv("TACHO_OPA_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))  # no opa on PATH either
    out = tacho(recorded, "replay", "--policy", str(POLICIES / "refunds.rego"), "--workflow", "refunds",
                check=False)
    assert out.returncode == 2 and "opa not found" in out.stderr


def repricer(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Two model calls, a lookup, then a price change."""
    ctx.llm("price of sku-1?")
    ctx.llm("and now?")
    ctx.tool("lookup", {"order": "sku-1"})
    change = ctx.propose_change("price:sku-1", {"price": "10"}, {"price": "12"})
    ctx.apply_change(change)
    return {}


CANDIDATE = """package tachograph

default decision := {"decision": "allow", "reason": "ok"}

decision := {"decision": "deny", "reason": "no tools after two model calls"} if {
	input.kind == "tool"
	input.budget.used.model_calls >= 2
	input.budget.used.tokens > 0
}

decision := {"decision": "require_approval", "reason": "price changes need a person"} if {
	input.kind == "change"
	input.target == "price:sku-1"
	input.budget.limits.max_model_calls == 5
}
"""


def test_changes_and_budget_use_reach_the_candidate(tmp_path, opa_server):
    """Changes are re-asked by target, and the budget used so far is rebuilt from model calls."""
    from tests.factories import make_ledger

    ledger = make_ledger(tmp_path / "ledger.db")
    original = opa_server(paths=[POLICIES / "refunds.rego"])
    agent = AgentSpec("x:repricer", repricer, TOOLS, {}, "pricing", {"id": "pricer", "version": "1"})
    with embedded_runtime(ledger, "acme", policy=OpaClient(original.url)) as rt:
        assert rt.run(agent, {}, budget={"max_model_calls": 5}).outcome == "succeeded"
    rego = tmp_path / "candidate.rego"
    rego.write_text(CANDIDATE)
    candidate = opa_server(paths=[rego])
    runs = load_runs(ledger.store, workflow="pricing")
    lookup, change = run_actions(runs[0]).actions
    assert lookup.input["budget"]["used"]["model_calls"] == 2 and lookup.input["budget"]["used"]["tokens"] > 0
    assert (change.kind, change.input["target"], change.recorded) == ("change", "price:sku-1", "allow")
    with OpaClient(candidate.url) as client:
        report = what_if_policy(runs, client.decide, replay_id="x", created="t", candidate="c",
                                gate=PolicyGate(max_new_approvals=Threshold.parse("50%", "--max-new-approvals")))
    s = report["summary"]
    assert (s["evaluated"], s["new_denials"], s["new_approvals"], s["unchanged"]) == (2, 1, 1, 0)
    assert report["gate"]["passed"] is True  # 1 of 2 is not over 50%
