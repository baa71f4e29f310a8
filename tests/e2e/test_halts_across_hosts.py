"""Kill switches across hosts: ``tacho serve`` and an agent in another OS process with its own
data directory, sharing nothing but HTTP. A halt set over the API, or by a person in the console
(real headless Chromium), stops the running agent at its next step within about a second."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tachograph.halts import halt_path
from tests.cli_support import ROOT, start_tacho, tacho
from tests.e2e.console_support import sign_in, text_of
from tests.integration.test_api_halts import TARGETS

AGENT = Path(__file__).with_name("halt_agent.py")
NAMES = {"publisher": "", "admin": "Ari Admin", "approver": "Pat Approver", "auditor": "Ada Auditor"}
STALE_S = 1.0  # how stale an agent's halts may be
SLACK_S = 1.0  # a step, an HTTP round trip and a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """``tacho serve`` in a subprocess, with a key per role of workspace ``acme``."""

    url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    secrets: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down cleanly (the tail is signed), exit -15
            _, err = self.proc.communicate(timeout=30)
            assert self.proc.returncode in (0, -15) and "Traceback" not in err, err

    def events(self, run_id: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/v1/runs/{run_id}/events", headers=self.auth("auditor"))
        assert r.status_code == 200, r.text
        return [e["event"] for e in r.json()["entries"]]


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("TACHO_CHECKPOINT_INTERVAL_S", "0.5")
    data_dir = tmp_path / "platform"
    tacho(data_dir, "keys")
    secrets = {}
    for role, name in NAMES.items():
        args = ["apikey", "create", "--workspace", "acme", "--role", role, "--json"]
        out = json.loads(tacho(data_dir, *args, *(["--label", name] if name else [])).stdout)
        secrets[role] = out["secret"]
    port = _free_port()
    proc = start_tacho(data_dir, "serve", "--port", str(port), "--log-level", "warning")
    server = Served(f"http://127.0.0.1:{port}", data_dir, proc, secrets)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(server.url + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "tacho serve did not start"
        time.sleep(0.1)
    yield server
    server.stop()


class Agent:
    """The agent process: its own directory and data dir, the platform only over HTTP."""

    def __init__(self, tmp: Path, server: Served, workflow: str, agent_id: str, run_id: str,
                 steps: int, step_s: float = 0.05) -> None:
        home = tmp / f"agent-{run_id}"
        (home / "data").mkdir(parents=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TACHO_DATA_DIR": str(home / "data")}
        self.proc = subprocess.Popen(
            [sys.executable, str(AGENT), server.url, server.secrets["publisher"], workflow, agent_id,
             run_id, str(steps), str(step_s)],
            cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.steps: list[dict[str, Any]] = []

    def wait_for_steps(self, n: int, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while len(self.steps) < n:
            line = self.proc.stdout.readline()
            assert line, f"the agent ended early: {self.proc.communicate()}"
            self.steps.append(json.loads(line))
            assert time.monotonic() < deadline, "the agent is too slow"

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        self.steps += [x for x in lines if "step" in x]
        return lines[-1]


def _check_stopped(server: Served, agent: Agent, result: dict[str, Any], since: float,
                   scope: str, target: str, record_index: int) -> None:
    assert result["outcome"] == "cancelled", result
    assert (result["halt"]["scope"], result["halt"]["target"]) == (scope, target)
    took = result["halted_at"] - since
    assert took < STALE_S + SLACK_S, f"the agent stopped {took:.2f}s after the halt"
    print(f"halt {scope} {target!r}: agent stopped {took:.2f}s after it was set; "
          f"{result['requests']} halt requests, {result['not_modified']} answered 304")
    events = server.events(result["run_id"])
    steps_done = [e for e in events if e["type"] == "tool.called"]
    assert len(steps_done) == len(agent.steps) and events[-1]["type"] == "run.completed"
    done = events[-1]["data"]
    assert done["outcome"] == "cancelled" and "halted by its kill switch" in done["error"]
    assert done["result"]["kill_switch"]["ledger_index"] == record_index
    assert done["result"]["kill_switch"]["target"] == target
    # cached (a request a second at most, not one a step) and revalidated with the ETag (304s)
    assert 1 <= result["not_modified"] and result["requests"] <= 2 + len(agent.steps) // 4, result


def _verified(server: Served) -> None:
    server.stop()
    verdict = tacho(server.data_dir, "verify", "--json", check=False)
    assert verdict.returncode == 0 and json.loads(verdict.stdout)["ok"] is True, verdict.stdout + verdict.stderr


def test_a_halt_set_over_the_api_stops_an_agent_on_another_host_at_its_next_step(served, tmp_path) -> None:
    workflow = "billing/../ops"  # a contract name with "/" and ".." works as a target
    agent = Agent(tmp_path, served, workflow, "billing-agent", "run-api-1", steps=400)
    agent.wait_for_steps(30)  # a few revalidations (304) before the halt
    put = httpx.put(served.url + halt_path("workflow", workflow), json={"reason": "refunds misfiring"},
                    headers=served.auth("admin"))
    since = time.time()
    assert put.status_code == 201, put.text
    _check_stopped(served, agent, agent.result(), since, "workflow", workflow, put.json()["record_index"])

    refused = Agent(tmp_path, served, workflow, "billing-agent", "run-api-2", steps=3).result()
    assert refused["outcome"] == "cancelled" and served.events("run-api-2")[0]["type"] == "run.started"
    assert [e["type"] for e in served.events("run-api-2")] == ["run.started", "run.completed"]

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
    resumed = Agent(tmp_path, served, workflow, "billing-agent", "run-api-3", steps=3).result()
    assert resumed["outcome"] == "succeeded"
    assert served.events("run-api-3")[-1]["data"] == {"outcome": "succeeded"}
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
    agent = Agent(tmp_path, served, "triage", agent_id, "run-console-1", steps=400)
    sign_in(browser, served, "admin", "/console/kill-switches")
    Select(browser.find_element(By.ID, "halt-scope")).select_by_value("agent")
    browser.find_element(By.ID, "halt-target").send_keys(agent_id)
    browser.find_element(By.ID, "halt-reason").send_keys("loops on refunds")
    agent.wait_for_steps(30)  # a few revalidations (304) before the halt
    since = time.time()
    browser.find_element(By.ID, "halt-submit").click()
    flash = text_of(browser, "flash", f"agent {agent_id} halted by Ari Admin")
    index = int(flash.rsplit("ledger index ", 1)[1].rstrip(")"))
    _check_stopped(served, agent, agent.result(), since, "agent", agent_id, index)

    browser.find_element(By.ID, f"halt-agent-{agent_id}").find_element(By.CSS_SELECTOR, "button.approve").click()
    text_of(browser, "flash", f"agent {agent_id} cleared")
    assert httpx.get(served.url + "/v1/halts", headers=served.auth("publisher")).json()["halts"] == []
    resumed = Agent(tmp_path, served, "triage", agent_id, "run-console-2", steps=3).result()
    assert resumed["outcome"] == "succeeded"
    _verified(served)
