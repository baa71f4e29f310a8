"""Kill switches across hosts: ``tacho serve`` and an agent process written against the runtime
(``runtime_agent.py``, its own directory and data dir), sharing nothing but HTTP. A halt set over
the API on a workflow, or by a person in the console (real headless Chromium) on an agent, stops
the running agent at its next step; while it holds, a new run of that scope is refused at its
start; cleared, runs go on again. (A run's halt set in the console, on both transports:
``test_runtime_across_processes.py``.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tachograph.halts import halt_path
from tests.e2e.console_support import sign_in, text_of
from tests.e2e.runtime_support import Agent, Platform, start_platform, tacho_run
from tests.integration.test_api_halts import TARGETS

STALE_S = 1.0  # how stale an agent's halts may be
SLACK_S = 1.0  # a step, an HTTP round trip and a busy 2-core machine


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Platform]:
    platform = start_platform("http", tmp_path / "platform")
    yield platform
    platform.stop()


def _agent(served: Platform, tmp_path: Path, prefix: str, scenario: str, **options: str) -> Agent:
    flags = [x for name, value in options.items() for x in (f"--{name.replace('_', '-')}", value)]
    return Agent(served, tmp_path / f"agent-{prefix}", prefix, scenario, options=flags)


def _check_stopped(served: Platform, agent: Agent, result: dict[str, Any], since: float,
                   scope: str, target: str, record_index: int) -> None:
    assert result["outcome"] == "cancelled" and result["halted"] is True, result
    kill_switch = result["result"]["kill_switch"]
    assert (kill_switch["scope"], kill_switch["target"], kill_switch["ledger_index"]) == (scope, target, record_index)
    took = result["at"] - since
    assert took < STALE_S + SLACK_S, f"the agent stopped {took:.2f}s after the halt"
    print(f"halt {scope} {target!r}: the agent stopped {took:.2f}s after it was set")
    events = served.completed(result["run_id"])
    steps = [e["event_id"] for e in events if e["type"] == "tool.called"]
    printed = [x["event_id"] for x in agent.events_printed(result["run_id"]) if x["type"] == "tool.called"]
    assert steps == printed and len(steps) < 600  # no step ran after the halt was seen
    done = events[-1]["data"]
    assert done["outcome"] == "cancelled" and "halted by its kill switch" in done["error"]
    assert done["result"]["kill_switch"]["ledger_index"] == record_index
    agent.finish()


def _verified(served: Platform) -> None:
    served.stop()
    verdict = tacho_run(served.data_dir, "verify", "--json", check=False)
    assert verdict.returncode == 0 and json.loads(verdict.stdout)["ok"] is True, verdict.stdout + verdict.stderr


def test_a_halt_set_over_the_api_stops_an_agent_on_another_host_at_its_next_step(served, tmp_path) -> None:
    workflow = "billing/../ops"  # a contract name with "/" and ".." works as a target
    agent = _agent(served, tmp_path, "api-1", "halt", workflow=workflow)
    agent.wait_for(lambda x: x["kind"] == "event" and x["seq"] >= 10, "ten steps")
    put = httpx.put(served.url + halt_path("workflow", workflow), json={"reason": "refunds misfiring"},
                    headers=served.auth("admin"))
    since = time.time()
    assert put.status_code == 201, put.text
    _check_stopped(served, agent, agent.result("halt"), since, "workflow", workflow, put.json()["record_index"])

    refused = _agent(served, tmp_path, "api-2", "short", workflow=workflow).result("short")
    assert refused["outcome"] == "cancelled" and refused["result"]["kill_switch"]["target"] == workflow
    assert [e["type"] for e in served.completed("api-2-short")] == ["run.started", "run.completed"]

    seen = httpx.get(served.url + "/v1/halts", headers=served.auth("publisher"))
    again = httpx.get(served.url + "/v1/halts", headers={**served.auth("publisher"),
                                                         "If-None-Match": seen.headers["etag"]})
    assert again.status_code == 304
    gone = httpx.request("DELETE", served.url + halt_path("workflow", workflow), json={"reason": "fixed"},
                         headers=served.auth("approver"))
    assert gone.status_code == 200, gone.text
    after = httpx.get(served.url + "/v1/halts", headers={**served.auth("publisher"),
                                                         "If-None-Match": seen.headers["etag"]})
    assert after.status_code == 200 and after.json()["halts"] == []
    resumed = _agent(served, tmp_path, "api-3", "short", workflow=workflow).result("short")
    assert resumed["outcome"] == "succeeded"
    assert served.completed("api-3-short")[-1]["data"] == {"outcome": "succeeded", "result": {"steps": 3}}
    _verified(served)


def test_every_valid_target_round_trips_through_the_real_server_when_encoded(served) -> None:
    for target in TARGETS:  # "a%2Fb" and "100%" included: uvicorn decodes the path once
        put = httpx.put(served.url + halt_path("workflow", target), json={"reason": "why"},
                        headers=served.auth("admin"))
        assert put.status_code == 201 and put.json()["halt"]["target"] == target, (target, put.text)
        listed = httpx.get(served.url + "/v1/halts", headers=served.auth("publisher")).json()["halts"]
        assert [h["target"] for h in listed] == [target]
        gone = httpx.request("DELETE", served.url + halt_path("workflow", target), headers=served.auth("approver"))
        assert gone.status_code == 200 and gone.json()["halt"]["target"] == target, (target, gone.text)
    for run_id in (".", ".."):
        put = httpx.put(served.url + halt_path("run", run_id), json={"reason": "why"}, headers=served.auth("admin"))
        assert put.status_code == 201 and put.json()["halt"]["target"] == run_id
    _verified(served)


def test_a_halt_set_in_the_console_by_a_person_stops_the_running_agent(served, tmp_path, browser) -> None:
    agent_id = "ops/../bot"
    agent = _agent(served, tmp_path, "console-1", "halt", workflow="triage", agent_id=agent_id)
    sign_in(browser, served, "admin", "/console/kill-switches")
    Select(browser.find_element(By.ID, "halt-scope")).select_by_value("agent")
    browser.find_element(By.ID, "halt-target").send_keys(agent_id)
    browser.find_element(By.ID, "halt-reason").send_keys("loops on refunds")
    agent.wait_for(lambda x: x["kind"] == "event" and x["seq"] >= 10, "ten steps")
    since = time.time()
    browser.find_element(By.ID, "halt-submit").click()
    flash = text_of(browser, "flash", f"agent {agent_id} halted by {served.identity('admin')}")
    index = int(flash.rsplit("ledger index ", 1)[1].rstrip(")"))
    _check_stopped(served, agent, agent.result("halt"), since, "agent", agent_id, index)

    browser.find_element(By.ID, f"halt-agent-{agent_id}").find_element(By.CSS_SELECTOR, "button.approve").click()
    text_of(browser, "flash", f"agent {agent_id} cleared")
    assert httpx.get(served.url + "/v1/halts", headers=served.auth("publisher")).json()["halts"] == []
    resumed = _agent(served, tmp_path, "console-2", "short", workflow="triage", agent_id=agent_id).result("short")
    assert resumed["outcome"] == "succeeded"
    assert served.completed("console-2-short")[0]["agent"]["id"] == agent_id
    _verified(served)
