"""Policies as users deploy them, across OS processes: ``tacho serve`` over a fresh data dir; the
policy published and activated with the real CLI (``tacho policy publish --activate``); a real
Open Policy Agent configured with ``tacho policy opa-config``, which pulls the active revision
from ``GET /v1/policy/bundle.tar.gz`` (long polling, a publisher key) and uploads its decision log
to ``/v1/opa/logs``; agent processes that import only ``tachograph`` and ask OPA
(``TACHO_OPA_URL``) before every tool call.

One deployment for the module; the tests run in order (each builds on the revisions before it)
and the last checks OPA's decision log against the agents' records and verifies the ledger.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli_support import ROOT
from tests.e2e.runtime_support import Agent, Platform, segment, start_platform, tacho_run
from tests.harness import opa as _opa
from tests.harness import wait_until

pytestmark = pytest.mark.opa

POLICY = ROOT / "tests" / "policies" / "refunds.rego"
RULE = "tachograph/decision"
NEW_REVISION_S = 10.0  # a generous bound on "within seconds" (long polling makes it well under 1 s)


@dataclass
class Deployment:
    """The platform, OPA, and what the tests learnt along the way."""

    platform: Platform
    root: Path
    opa: _opa.OpaServer = field(init=False)
    revisions: list[str] = field(default_factory=list)  # activated, in order
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # OPA's decision id -> record

    def agent(self, name: str, *scenarios: str, options: tuple[str, ...] = ()) -> Agent:
        """An agent process asking this OPA."""
        return Agent(self.platform, self.root / f"agent-{name}", name, *scenarios, options=options,
                     env={"TACHO_OPA_URL": self.opa.url})

    def policy(self, *args: str, remote: bool = True) -> dict[str, Any]:
        """``tacho policy ARGS --json``: over the API with an admin key, or on the local ledger
        (then checked with the harness's opa, ``TACHO_OPA_BIN``, before it is recorded)."""
        if remote:
            env = {"TACHO_API_URL": self.platform.url, "TACHO_API_KEY": self.platform.secrets["admin"]}
        else:
            env, args = {"TACHO_OPA_BIN": str(_opa.opa_path())}, (*args, "--workspace", "acme")
        out: dict[str, Any] = json.loads(tacho_run(self.platform.data_dir, "policy", *args, "--json",
                                                   env=env).stdout)
        return out

    def record(self, events: list[dict[str, Any]]) -> None:
        """Keep every OPA decision of a run's ``policy.evaluated`` events (for the decision log)."""
        for e in events:
            if e["type"] == "policy.evaluated" and "decision_id" in e["data"]:
                assert e["data"]["decision_id"] not in self.decisions, "a decision id recorded twice"
                self.decisions[e["data"]["decision_id"]] = e["data"]


def _bundles_loaded(opa: _opa.OpaServer) -> bool:
    try:
        return httpx.get(f"{opa.url}/health", params={"bundles": "true"}, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _loaded_policy(opa: _opa.OpaServer) -> list[str]:
    """The Rego modules OPA holds now (its Policy API: asking it is not a decision)."""
    r = httpx.get(f"{opa.url}/v1/policies", timeout=2)
    assert r.status_code == 200, r.text
    return [m["raw"] for m in r.json()["result"]]


def _start_opa(opa: _opa.OpaServer) -> None:
    """Start OPA and wait until it activated the bundle it downloaded from the platform."""
    opa.start()
    wait_until(lambda: _bundles_loaded(opa), 30, what="opa's bundle from tacho serve")


@pytest.fixture(scope="module")
def deployment(opa_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("policy-e2e")
    platform = start_platform("http", root / "platform")
    opa: _opa.OpaServer | None = None
    try:
        d = Deployment(platform, root)
        first = d.policy("publish", str(POLICY), "--activate", "--message", "refunds: approve above 100",
                         remote=False)  # an operator on the platform's host
        assert first["active"] is True and first["checked_with"].startswith("opa "), first
        d.revisions.append(first["revision"])
        config = tacho_run(platform.data_dir, "policy", "opa-config", "--api-url", platform.url).stdout
        parsed = json.loads(config)
        assert parsed["bundles"]["tachograph"]["polling"]["long_polling_timeout_seconds"] > 0
        assert parsed["decision_logs"]["service"] == "tachograph"
        (root / "opa-config.json").write_text(config)  # as printed: the key comes from OPA's env
        opa = _opa.OpaServer(root / "opa", config=root / "opa-config.json",
                             env={"TACHO_OPA_KEY": platform.secrets["publisher"]})
        _start_opa(opa)
        d.opa = opa
        yield d
    finally:
        if opa is not None:
            opa.close()  # first: it flushes its decision log, and a live long poll holds serve up
        platform.stop()


def _events(platform: Platform, run_id: str) -> list[dict[str, Any]]:
    events = platform.completed(run_id)
    assert [e["seq"] for e in events] == list(range(len(events))), "the run's seqs have a gap"
    assert len({e["event_id"] for e in events}) == len(events), "an event stored twice"
    return events


def _decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == "policy.evaluated"]


def _by_opa(decision: dict[str, Any], revision: str) -> bool:
    return (decision["policy"] == RULE and decision["revision"] == revision
            and isinstance(decision.get("decision_id"), str) and len(decision["decision_id"]) > 0)


def _decide(platform: Platform, approval: dict[str, Any], decision: str, reason: str) -> None:
    r = httpx.post(f"{platform.url}/v1/approvals/{segment(approval['approval_id'])}/decision",
                   json={"decision": decision, "reason": reason}, headers=platform.auth("approver"))
    assert r.status_code == 200, r.text


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_opa_allows_denies_and_asks_a_person_under_the_revision_published_with_the_cli(deployment) -> None:
    d = deployment
    p, rev = d.platform, d.revisions[0]
    agent = d.agent("p1", "refund-40", "refund-5000", "refund-250", "refund-300")
    allowed, denied = agent.result("refund-40"), agent.result("refund-5000")
    assert allowed["outcome"] == "succeeded" and allowed["result"]["refunded"] == 40, allowed
    assert denied["outcome"] == "escalated", denied
    assert denied["result"]["denied"] == {  # what the agent code caught
        "error": "PolicyDenied", "is_policy_denied": True, "action": "refund", "decision": "deny",
        "reason": "refund of 5000 is above the limit of 1000"}

    _decide(p, p.pending_approval(agent.run_id("refund-250")), "approved", "customer verified")
    assert agent.result("refund-250")["outcome"] == "succeeded"
    _decide(p, p.pending_approval(agent.run_id("refund-300")), "rejected", "refund already issued")
    rejected = agent.result("refund-300")
    assert rejected["outcome"] == "escalated", rejected
    assert rejected["result"]["denied"]["is_policy_denied"] is True
    assert rejected["result"]["denied"]["decision"] == "require_approval"
    assert rejected["result"]["denied"]["reason"].startswith("not approved by a person")
    agent.finish()
    issued = [x["amount"] for x in agent.lines if x["kind"] == "refund-issued"]
    assert issued == [40, 250], "the refund tool ran exactly for the allowed and the approved refunds"
    loaded = agent.wait_for(lambda x: x["kind"] == "modules", "the modules it loaded")
    assert loaded["platform"] == [], f"the agent process loaded the platform's {loaded['platform']}"

    head = ["run.started", "policy.evaluated", "tool.called", "policy.evaluated"]
    expected = {
        "refund-40": ([*head, "tool.called", "run.completed"], "allow", "succeeded"),
        "refund-5000": ([*head, "run.completed"], "deny", "escalated"),
        "refund-250": ([*head, "approval.requested", "approval.decided", "tool.called", "run.completed"],
                       "require_approval", "succeeded"),
        "refund-300": ([*head, "approval.requested", "approval.decided", "run.completed"],
                       "require_approval", "escalated"),
    }
    for scenario, (types, decision, outcome) in expected.items():
        events = _events(p, agent.run_id(scenario))
        assert [[e["seq"], e["type"], e["event_id"]] for e in events] == agent.result(scenario)["events"]
        assert [e["type"] for e in events] == types, scenario
        lookup, refund = _decisions(events)
        assert (lookup["action"], lookup["decision"]) == ("orders.lookup", "allow")
        assert (refund["action"], refund["decision"]) == ("refund", decision), (scenario, refund)
        assert _by_opa(lookup, rev) and _by_opa(refund, rev), (scenario, lookup, refund)
        assert events[-1]["data"]["outcome"] == outcome
        tools = [e["data"]["tool"] for e in events if e["type"] == "tool.called"]
        assert tools == (["orders.lookup", "refund"] if outcome == "succeeded" else ["orders.lookup"])
        if decision == "require_approval":
            asked, decided = events[4]["data"], events[5]["data"]
            assert asked["summary"] == f"refund: {refund['reason']}"
            assert decided["by"] == p.identity("approver")
            assert decided["decision"] == ("approved" if outcome == "succeeded" else "rejected")
        d.record(events)

    # the revision every decision names is in the ledger with exactly the file that judged them
    shown = p.get(f"/v1/policy/revisions/{rev}")
    assert shown["sources"] == {"refunds.rego": POLICY.read_text()}
    assert shown["active"] is True and shown["ever_active"] is True
    published = p.get("/v1/audit-log", type="policy.published", limit=500)["records"]
    assert [r["record"]["data"]["revision"] for r in published] == [rev]
    assert published[0]["record"]["data"]["files"] == {"refunds.rego": POLICY.read_text()}
    assert published[0]["record"]["data"]["digest"] == shown["digest"]
    activated = p.get("/v1/audit-log", type="policy.activated", limit=500)["records"]
    assert [(r["record"]["data"]["revision"], r["record"]["data"]["previous"]) for r in activated] == [(rev, None)]


def test_a_stricter_revision_activated_while_opa_runs_judges_the_next_run_within_seconds(
        deployment, tmp_path) -> None:
    d = deployment
    p, opa = d.platform, d.opa
    stricter = tmp_path / "refunds.rego"
    stricter.write_text(POLICY.read_text().replace("deny_above := 1000", "deny_above := 200"))
    assert stricter.read_text() != POLICY.read_text()
    out = d.policy("publish", str(stricter), "--activate", "--message", "deny above 200",
                   "--reason", "fraud wave")
    rev = out["revision"]
    assert rev != d.revisions[-1] and out["active"] is True, out
    activated = _time(out["activation"]["activated_at"])
    d.revisions.append(rev)

    wait_until(lambda: _loaded_policy(opa) == [stricter.read_text()], NEW_REVISION_S + 5,
               what="OPA loading the stricter revision")
    loaded_s = time.time() - activated.timestamp()
    agent = d.agent("p2", "refund-250")
    result = agent.result("refund-250")
    agent.finish()
    assert result["outcome"] == "escalated", result
    assert result["result"]["denied"]["reason"] == "refund of 250 is above the limit of 200"
    events = _events(p, agent.run_id("refund-250"))
    assert "approval.requested" not in [e["type"] for e in events]  # denied now, no longer asked
    lookup, refund = _decisions(events)
    assert refund["decision"] == "deny" and _by_opa(refund, rev) and _by_opa(lookup, rev), refund
    judged = next(e for e in events if e["type"] == "policy.evaluated" and e["data"]["action"] == "refund")
    took = (_time(judged["time"]) - activated).total_seconds()
    print(f"OPA held the new revision {loaded_s:.2f}s after its activation; the next run's "
          f"decision reported it {took:.2f}s after (an agent process's start-up included)")
    assert loaded_s < NEW_REVISION_S, f"OPA loaded the new revision only after {loaded_s:.1f}s"
    assert took < 2 * NEW_REVISION_S, f"the next run was judged by it only {took:.1f}s after"
    assert [x for x in agent.lines if x["kind"] == "refund-issued"] == []
    d.record(events)

    diff = p.get("/v1/policy/diff", **{"from": d.revisions[0], "to": rev})["files"]
    assert [(f["path"], f["status"]) for f in diff] == [("refunds.rego", "changed")]
    assert "-deny_above := 1000" in diff[0]["diff"] and "+deny_above := 200" in diff[0]["diff"]
    listed = {r["revision"]: r for r in p.get("/v1/policy/revisions")["revisions"]}
    assert (listed[d.revisions[0]]["active"], listed[d.revisions[0]]["ever_active"]) == (False, True)
    assert listed[rev]["active"] is True


def test_opa_stopped_mid_run_denies_writes_allows_reads_then_the_workspace_setting_closes_reads(
        deployment) -> None:
    d = deployment
    p, opa = d.platform, d.opa
    go = d.root / "go-p3"
    agent = d.agent("p3", "outage", options=("--go-file", str(go)))
    agent.wait_for(lambda x: x["kind"] == "paused", "its pause after the first read")
    opa.stop()
    go.touch()
    result = agent.result("outage")
    agent.finish()
    lookup, refund, again = result["result"]["steps"]
    assert lookup == {"tool": "orders.lookup", "ran": True}
    assert (refund["tool"], refund["ran"], refund["denied"]["is_policy_denied"]) == ("refund", False, True)
    assert "policy engine unavailable" in refund["denied"]["reason"]
    assert "write actions fail closed: denied (workspace acme's setting)" in refund["denied"]["reason"]
    assert again == {"tool": "orders.lookup", "ran": True}
    assert result["outcome"] == "escalated"
    assert [x for x in agent.lines if x["kind"] == "refund-issued"] == []

    events = _events(p, agent.run_id("outage"))  # contiguous, each once, and complete
    assert [[e["seq"], e["type"], e["event_id"]] for e in events] == result["events"]
    assert events[-1]["type"] == "run.completed"
    first, closed, opened = _decisions(events)
    assert first["decision"] == "allow" and _by_opa(first, d.revisions[-1])
    for decision, verdict in ((closed, "deny"), (opened, "allow")):  # recorded as such, not by OPA
        assert decision["decision"] == verdict and decision["policy"] == RULE
        assert "decision_id" not in decision and "revision" not in decision
        assert decision["reason"].startswith("policy engine unavailable (OPA at ")
    assert "read actions fail open: allowed (workspace acme's setting)" in opened["reason"]
    assert [e["data"]["tool"] for e in events if e["type"] == "tool.called"] == ["orders.lookup", "orders.lookup"]
    d.record(events)

    # the workspace now fails closed for reads too: a revision says so (OPA still down)
    out = d.policy("publish", str(POLICY), "--activate", "--fail-closed", "read", "--fail-closed", "write",
                   "--message", "fail closed for reads too")
    assert out["fail_closed"] == ["read", "write"] and out["active"] is True, out
    d.revisions.append(out["revision"])
    state = p.get("/v1/policy", "publisher")  # what the runtime reads when OPA fails
    assert state["fail_closed"] == ["read", "write"] and state["active"]["revision"] == out["revision"]

    go = d.root / "go-p4"
    agent = d.agent("p4", "outage", options=("--go-file", str(go)))
    agent.wait_for(lambda x: x["kind"] == "paused", "its pause after the first read")
    _start_opa(opa)  # back: it downloads the revision in force
    go.touch()
    result = agent.result("outage")
    agent.finish()
    lookup, refund, again = result["result"]["steps"]
    assert (lookup["ran"], lookup["denied"]["decision"]) == (False, "deny")
    assert "read actions fail closed: denied (workspace acme's setting)" in lookup["denied"]["reason"]
    assert refund == {"tool": "refund", "ran": True} and again == {"tool": "orders.lookup", "ran": True}
    assert [x["amount"] for x in agent.lines if x["kind"] == "refund-issued"] == [40]
    events = _events(p, agent.run_id("outage"))
    assert [[e["seq"], e["type"], e["event_id"]] for e in events] == result["events"]
    closed_read, *by_opa = _decisions(events)
    assert closed_read["decision"] == "deny" and "decision_id" not in closed_read
    assert [x["decision"] for x in by_opa] == ["allow", "allow"]
    assert all(_by_opa(x, out["revision"]) for x in by_opa), by_opa
    d.record(events)


def test_opas_decision_log_lands_in_the_workspace_once_and_the_ledger_verifies(deployment) -> None:
    d = deployment
    p = d.platform
    assert len(d.decisions) >= 10
    d.opa.stop()  # OPA uploads what it still holds before it exits

    def logged() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for run in p.get("/v1/runs", workflow=RULE, limit=500)["runs"]:
            r = httpx.get(f"{p.url}/v1/runs/{segment(run['run_id'])}/events", headers=p.auth("auditor"))
            assert r.status_code == 200, r.text
            for entry in r.json()["entries"]:
                event = entry["event"]
                if event["type"] == "policy.evaluated":
                    found.setdefault(event["data"]["decision_id"], []).append({**entry, "run": run})
        return found

    deadline = time.monotonic() + 30
    while set(found := logged()) != set(d.decisions):
        missing = set(d.decisions) - set(found)
        assert not set(found) - set(d.decisions), "OPA logged decisions no agent asked for"
        assert time.monotonic() < deadline, f"decisions never logged by OPA: {sorted(missing)}"
        time.sleep(0.3)
    for decision_id, ours in d.decisions.items():
        [entry] = found[decision_id]  # once
        event, theirs = entry["event"], entry["event"]["data"]
        assert event["workspace"] == "acme" and event["run_id"].startswith("opa.tachograph.decision.")
        assert event["event_id"] == f"opa-{decision_id}" and event["agent"]["id"] == "opa"
        assert entry["source"]["kind"] == "opa" and entry["run"]["origin"] == "production"
        assert (theirs["decision"], theirs["reason"], theirs["revision"], theirs["action"]) == (
            ours["decision"], ours["reason"], ours["revision"], ours["action"]), decision_id
    assert {x["revision"] for x in d.decisions.values()} == {d.revisions[0], d.revisions[1], d.revisions[2]}
    assert p.quarantine() == []

    p.stop()
    verdict = tacho_run(p.data_dir, "verify", "--json", check=False)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert json.loads(verdict.stdout)["ok"] is True
