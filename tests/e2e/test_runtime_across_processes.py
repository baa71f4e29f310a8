"""The agent runtime across OS processes, on both transports: an agent process (``import
tachograph`` only, its own directory) and the platform (``tacho serve``; for Kafka also a
``tacho ingest`` worker) share nothing but HTTP or Kafka. People act in a real headless Chromium.

Each transport gets one platform for the whole module (``runtime_support.start_platform``); the
last test checks that the ledger verifies and that only the forgery was quarantined. The Kafka
broker is Tansu (the harness's cheapest: in memory, up in a fifth of a second; the ingest worker
reads with manual assignment, so Tansu's slow group joins do not matter).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.e2e.console_support import sign_in, text_of, wait_for
from tests.e2e.runtime_support import Agent, Platform, segment, start_platform, tacho_run

STALE_S = 1.0  # how stale an agent's halts may be
SLACK_S = 1.5  # a step, the HTTP round trips and a busy 2-core machine
DECISION_S = 1.0  # "a decision reaches a waiting agent within a second" (from the person's click)
CREDIT_STEPS = ["run.started", "tool.called", "model.called", "change.proposed", "policy.evaluated",
                "approval.requested"]


@pytest.fixture(scope="module", params=["http", pytest.param("kafka", marks=pytest.mark.kafka)])
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """``tacho serve`` (and for ``kafka`` a ``tacho ingest`` worker reading a Tansu topic)."""
    root = tmp_path_factory.mktemp(f"runtime-{request.param}")
    bootstrap = topic = None
    if request.param == "kafka":
        broker = request.getfixturevalue("tansu_broker")
        topic = broker.create_topic(f"agent-events-{uuid.uuid4().hex[:8]}", 2)
        bootstrap = broker.bootstrap
    served = start_platform(request.param, root / "platform", bootstrap, topic)
    yield served
    served.stop()


def _agent(platform: Platform, tmp_path: Path, name: str, *scenarios: str) -> Agent:
    return Agent(platform, tmp_path / f"agent-{name}", f"{platform.transport}-{name}", *scenarios)


def _ids(events: list[dict[str, Any]]) -> list[list[Any]]:
    return [[e["seq"], e["type"], e["event_id"]] for e in events]


def _card(driver: Any, platform: Platform, approval_id: str) -> Any:
    """The approval's card on the console's queue (reloading until it shows)."""
    def shown(d: Any) -> Any:
        d.get(platform.url + "/console/approvals")
        found = d.find_elements(By.ID, "approval-" + approval_id)
        return found[0] if found else False

    return wait_for(driver, shown, 20)


def _decide_in_console(browser: Any, platform: Platform, approval: dict[str, Any], button: str,
                       reason: str) -> float:
    """A person's click on Approve or Reject; the time of the click."""
    sign_in(browser, platform, "approver", "/console/approvals")
    card = _card(browser, platform, approval["approval_id"])
    card.find_element(By.CLASS_NAME, "reason").send_keys(reason)
    clicked = time.time()
    card.find_element(By.CSS_SELECTOR, f"button.{button}").click()
    decision = {"approve": "approved", "reject": "rejected"}[button]
    text_of(browser, "flash", f"{approval['approval_id']} of {approval['run_id']} {decision} by "
                              f"{platform.identity('approver')}")
    return clicked


def _resumed_within_a_second(agent: Agent, run_id: str, clicked: float, approved: bool) -> None:
    resumed = agent.wait_for(lambda x: x["kind"] == "resumed" and x["run_id"] == run_id, "the end of its wait")
    took = resumed["at"] - clicked
    print(f"the agent went on {took:.2f}s after the click")
    assert resumed["approved"] is approved and took < DECISION_S, f"the agent went on {took:.2f}s after the click"


def test_a_person_approves_in_the_console_and_the_waiting_agent_completes(platform, browser, tmp_path) -> None:
    agent = _agent(platform, tmp_path, "approve", "approval")
    run_id = agent.run_id("approval")
    approval = platform.pending_approval(run_id)
    assert approval["approval_id"].startswith(f"{run_id}/approval-")
    clicked = _decide_in_console(browser, platform, approval, "approve", "customer verified by phone")
    _resumed_within_a_second(agent, run_id, clicked, True)

    result = agent.result("approval")
    assert result["outcome"] == "succeeded" and result["result"]["approved"] is True, result
    agent.finish()
    events = platform.completed(run_id)
    assert _ids(events) == result["events"]  # one writer: every event of the run is the agent's
    assert [e["type"] for e in events] == [*CREDIT_STEPS, "approval.decided", "change.applied", "run.completed"]
    decided = events[6]["data"]
    assert decided == {"approval_id": approval["approval_id"], "decision": "approved",
                       "by": platform.identity("approver"), "reason": "customer verified by phone"}
    got = platform.approval(approval["approval_id"])
    assert (got["status"], got["decided_by"], got["run_id"]) == ("approved", platform.identity("approver"), run_id)
    record = platform.decision_record(got["decision_index"])  # the person's decision, by the platform
    assert record["type"] == "approval.decision"
    assert record["data"] == {"approval_id": approval["approval_id"], "run_id": run_id, "decision": "approved",
                              "by": platform.identity("approver"), "reason": "customer verified by phone"}
    again = httpx.post(f"{platform.url}/v1/approvals/{segment(approval['approval_id'])}/decision",
                       json={"decision": "rejected", "reason": "too late"}, headers=platform.auth("approver"))
    assert again.status_code == 409 and "already decided" in again.json()["message"]


def test_a_person_rejects_in_the_console_and_the_agent_takes_its_not_approved_path(
        platform, browser, tmp_path) -> None:
    agent = _agent(platform, tmp_path, "reject", "approval")
    run_id = agent.run_id("approval")
    approval = platform.pending_approval(run_id)
    clicked = _decide_in_console(browser, platform, approval, "reject", "over the customer's limit")
    _resumed_within_a_second(agent, run_id, clicked, False)

    result = agent.result("approval")
    assert result["outcome"] == "escalated" and result["result"]["approved"] is False, result
    agent.finish()
    events = platform.completed(run_id)
    assert _ids(events) == result["events"]
    assert [e["type"] for e in events] == [*CREDIT_STEPS, "approval.decided", "run.completed"]  # nothing applied
    assert events[6]["data"] == {"approval_id": approval["approval_id"], "decision": "rejected",
                                 "by": platform.identity("approver"), "reason": "over the customer's limit"}
    assert events[-1]["data"]["outcome"] == "escalated"
    got = platform.approval(approval["approval_id"])
    assert got["status"] == "rejected" and platform.decision_record(got["decision_index"])["data"]["decision"] == "rejected"


def test_an_approval_nobody_decides_expires_and_the_agent_goes_on_without_it(platform, tmp_path) -> None:
    agent = _agent(platform, tmp_path, "expire", "expire")
    run_id = agent.run_id("expire")
    result = agent.result("expire")
    assert result["outcome"] == "escalated" and result["result"]["approved"] is False, result
    assert 2.0 <= result["seconds"] < 10, result["seconds"]  # waited its 2 s timeout, no longer
    agent.finish()
    events = platform.completed(run_id)
    assert [e["type"] for e in events] == [*CREDIT_STEPS, "run.completed"]
    aid = events[5]["data"]["approval_id"]
    assert events[5]["data"]["timeout_s"] in (2, "2")
    got = platform.approval(aid, role="publisher")  # what the agent itself may read
    assert (got["status"], got["decided_by"]) == ("expired", None)
    late = httpx.post(f"{platform.url}/v1/approvals/{segment(aid)}/decision", json={"decision": "approved"},
                      headers=platform.auth("approver"))
    assert late.status_code == 409 and "expired" in late.json()["message"]


def test_a_halt_set_in_the_console_stops_the_running_agent_at_its_next_step(platform, browser, tmp_path) -> None:
    agent = _agent(platform, tmp_path, "halt", "halt")
    run_id = agent.run_id("halt")
    sign_in(browser, platform, "admin", "/console/kill-switches")
    Select(browser.find_element(By.ID, "halt-scope")).select_by_value("run")
    browser.find_element(By.ID, "halt-target").send_keys(run_id)
    browser.find_element(By.ID, "halt-reason").send_keys("loops on refunds")
    agent.wait_for(lambda x: x["kind"] == "event" and x["seq"] >= 10, "ten steps")  # running
    clicked = time.time()
    browser.find_element(By.ID, "halt-submit").click()
    flash = text_of(browser, "flash", f"run {run_id} halted by {platform.identity('admin')}")
    index = int(flash.rsplit("ledger index ", 1)[1].rstrip(")"))

    result = agent.result("halt")
    took = result["at"] - clicked
    assert took < STALE_S + SLACK_S, f"the agent stopped {took:.2f}s after the click"
    assert result["outcome"] == "cancelled" and result["halted"] is True, result
    assert "halted by its kill switch" in result["error"]
    kill_switch = result["result"]["kill_switch"]
    assert (kill_switch["scope"], kill_switch["target"], kill_switch["ledger_index"]) == ("run", run_id, index)
    assert kill_switch["by"] == platform.identity("admin") and kill_switch["reason"] == "loops on refunds"
    agent.finish()
    events = platform.completed(run_id)
    assert _ids(events) == result["events"]
    steps = [e["event_id"] for e in events if e["type"] == "tool.called"]
    printed = [x["event_id"] for x in agent.events_printed(run_id) if x["type"] == "tool.called"]
    assert steps == printed  # no step ran after it stopped
    assert len(steps) < 600
    done = events[-1]["data"]
    assert done["outcome"] == "cancelled" and done["result"]["kill_switch"]["ledger_index"] == index
    print(f"{platform.transport}: halted {took:.2f}s after the click, after {len(steps)} steps")


def test_an_approval_decided_that_no_person_made_is_refused_and_the_run_cannot_use_it(platform, tmp_path) -> None:
    agent = _agent(platform, tmp_path, "forge", "forge")
    run_id = agent.run_id("forge")
    forged = agent.wait_for(lambda x: x["kind"] == "forged", "the forgery")
    platform.forged.append((run_id, forged["event_id"]))
    if platform.transport == "http":  # the platform answers the POST with the refusal
        assert forged["refused"] and forged["event_id"] in forged["refused"], forged
        assert "which no person decided through the platform" in forged["refused"]
    else:  # Kafka only acknowledges; the refusal is the ingest worker's
        assert forged["refused"] is None
    result = agent.result("forge")
    assert result["outcome"] == "escalated" and result["result"]["approved"] is False, result
    agent.finish()
    events = platform.completed(run_id)
    assert _ids(events) == result["events"]
    assert [e["type"] for e in events] == [*CREDIT_STEPS, "run.completed"]  # the forgery's seq went to the agent
    assert forged["seq"] == events[-1]["seq"] and forged["event_id"] not in [e["event_id"] for e in events]
    assert platform.approval(forged["approval_id"])["status"] == "expired"  # the forgery decided nothing
    mine = [i for i in platform.quarantine() if i["run_id"] == run_id]
    assert [i["event_id"] for i in mine] == [forged["event_id"]]
    assert "which no person decided through the platform" in mine[0]["reason"]


BUDGETS = {  # scenario: (limit, cap as runtime_agent.py sets it)
    "budget-calls": ("model_calls", Decimal(2)),
    "budget-tokens": ("tokens", Decimal(60)),
    "budget-cost": ("cost_usd", Decimal("0.00001")),
    "budget-deadline": ("deadline", Decimal(1)),
}


@pytest.fixture(scope="module")
def budget_runs(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One agent process running a run per budget kind, one after the other."""
    agent = _agent(platform, tmp_path_factory.mktemp("budgets"), "budgets", *BUDGETS)
    results = {scenario: agent.result(scenario) for scenario in BUDGETS}
    agent.finish()
    loaded = agent.wait_for(lambda x: x["kind"] == "modules", "the modules it loaded")
    assert loaded["platform"] == [], f"the agent process loaded the platform's {loaded['platform']}"
    return results


@pytest.mark.parametrize("scenario", list(BUDGETS))
def test_every_budget_kind_ends_the_run_cancelled_with_budget_exceeded(platform, budget_runs, scenario) -> None:
    limit, cap = BUDGETS[scenario]
    result = budget_runs[scenario]
    assert result["outcome"] == "cancelled" and result["result"] == {"budget_exceeded": limit}, result
    assert result["error"].startswith(f"budget {limit} exceeded: ")
    events = platform.completed(result["run_id"])
    assert _ids(events) == result["events"]
    started, exceeded, done = events[0]["data"], events[-2], events[-1]["data"]
    assert Decimal(str(next(iter(started["budget"].values())))) == cap  # the cap is recorded
    assert exceeded["type"] == "budget.exceeded" and exceeded["data"]["limit"] == limit
    assert Decimal(str(exceeded["data"]["limit_value"])) == cap
    assert Decimal(str(exceeded["data"]["observed"])) > cap
    assert done["outcome"] == "cancelled" and done["result"] == {"budget_exceeded": limit}
    calls = [e for e in events if e["type"] == "model.called"]
    if limit == "model_calls":  # checked before the call: the third one never ran
        assert len(calls) == 2 and Decimal(str(exceeded["data"]["observed"])) == 3
    elif limit == "tokens":
        assert sum(c["data"]["input_tokens"] + c["data"]["output_tokens"] for c in calls) > cap
    elif limit == "cost_usd":  # exact money: the sum of the recorded costs
        assert sum(Decimal(str(c["data"]["cost_usd"])) for c in calls) == Decimal(str(exceeded["data"]["observed"]))
    else:  # the deadline: wall time from run.started, checked before each (0.4 s) tool call
        steps = [e for e in events if e["type"] == "tool.called"]
        assert 2 <= len(steps) <= 4 and not calls
        assert 1 < Decimal(str(exceeded["data"]["observed"])) < 3


def test_a_crashed_agent_loses_at_most_what_it_had_not_yet_sent(platform, tmp_path) -> None:
    """SIGKILL mid-run: what the runtime flushed (before its wait for a person) is stored exactly
    once; the ledger holds a prefix of what the agent made and nothing it did not; the run stays open."""
    agent = _agent(platform, tmp_path, "crash", "crash")
    run_id = agent.run_id("crash")
    approval = platform.pending_approval(run_id)  # the runtime flushed before it began to wait
    at_flush = platform.events(run_id)
    assert [e["type"] for e in at_flush] == ["run.started", "tool.called", "tool.called", "tool.called",
                                            "approval.requested"]
    r = httpx.post(f"{platform.url}/v1/approvals/{segment(approval['approval_id'])}/decision",
                   json={"decision": "approved", "reason": "go on"}, headers=platform.auth("approver"))
    assert r.status_code == 200, r.text
    agent.wait_for(lambda x: x["kind"] == "event" and x["seq"] >= len(at_flush) + 10, "ten more steps")
    agent.kill()

    printed = agent.events_printed(run_id)  # every event the agent had made, up to its last print
    assert [x["seq"] for x in printed] == list(range(len(printed)))
    stored = platform.settled_events(run_id)
    ids = [e["event_id"] for e in stored]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert [e["seq"] for e in stored] == list(range(len(stored))), "the ledger holds a gap"
    assert _ids(stored[: len(at_flush)]) == _ids(at_flush)  # everything flushed is there
    assert len(stored) <= len(printed) + 1
    for e in stored[: len(printed)]:  # nothing invented: each is what the agent made
        x = printed[e["seq"]]
        assert (e["event_id"], e["type"]) == (x["event_id"], x["type"])
        if e["type"] == "tool.called":
            assert e["data"]["args"]["n"] == x["data"]["args"]["n"]
    if len(stored) > len(printed):  # killed between recording a step and printing it
        extra = stored[-1]
        assert extra["type"] == "tool.called" and extra["data"]["args"]["n"] == printed[-1]["data"]["args"]["n"] + 1
    assert "run.completed" not in [e["type"] for e in stored]  # left open, and listed so
    assert run_id in [r["run_id"] for r in platform.get("/v1/runs", outcome="running", limit=500)["runs"]]
    assert [i for i in platform.quarantine() if i["run_id"] == run_id] == []
    print(f"{platform.transport}: the agent made {len(printed)}+ events before SIGKILL; the ledger holds "
          f"{len(stored)} (flushed at the wait: {len(at_flush)})")


def test_afterwards_the_ledger_verifies_and_only_the_forgery_was_quarantined(platform) -> None:
    # last of the module for each transport: every agent above has finished or was killed
    quarantined = [(i["run_id"], i["event_id"]) for i in platform.quarantine()]
    assert quarantined == platform.forged, "quarantined: exactly the forgeries, nothing else"
    platform.stop()
    verdict = tacho_run(platform.data_dir, "verify", "--json", check=False)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    report = json.loads(verdict.stdout)
    assert report["ok"] is True and report["approvals_checked_from"] == 0, report
