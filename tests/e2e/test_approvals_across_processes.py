"""Approvals across processes: ``tacho serve`` subprocesses, agents as separate OS processes that
share nothing with the platform but HTTP, and a person clicking in a real headless Chromium."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.cli_support import ROOT, start_tacho, tacho
from tests.e2e.approval_agent import segment
from tests.e2e.console_support import text_of, wait_for

AGENT = Path(__file__).with_name("approval_agent.py")
WS = "acme"
PEOPLE = {"publisher": "agent", "approver": "Pat Approver", "auditor": "Ada Auditor",
          "globex-approver": "Gil Globex"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = start_tacho(data_dir, "serve", "--port", str(port), "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "tacho serve did not start"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -15) and "Traceback" not in err, err


@dataclass
class Platform:
    """Two ``tacho serve`` processes sharing one data directory (one ledger), and keys."""

    data_dir: Path
    url: str  # the server people and agents use
    other_url: str  # a second server process on the same ledger
    secrets: dict[str, str]
    ids: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    def identity(self, role: str) -> str:
        return f"{PEOPLE[role]} (apikey:{self.ids[role]})"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    import os

    data_dir = tmp_path_factory.mktemp("approvals") / "data"
    saved = dict(os.environ)
    os.environ.update(TACHO_APPROVAL_DECISIONS="person", TACHO_CHECKPOINT_INTERVAL_S="0.5")
    try:
        tacho(data_dir, "keys")
        secrets, ids = {}, {}
        for role, name in PEOPLE.items():
            ws, r = ("globex", "approver") if role == "globex-approver" else (WS, role)
            out = json.loads(tacho(data_dir, "apikey", "create", "--workspace", ws, "--role", r,
                                   "--label", name, "--json").stdout)
            secrets[role], ids[role] = out["secret"], out["key"]["id"]
        first, url = _serve(data_dir)
        second, other_url = _serve(data_dir)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield Platform(data_dir, url, other_url, secrets, ids)
    _stop(first)
    _stop(second)


class Agent:
    """An agent OS process (``approval_agent.py``) and what it printed."""

    def __init__(self, platform: Platform, run_id: str, approval_id: str, timeout_s: float = 120,
                 forge: bool = False) -> None:
        args = [sys.executable, str(AGENT), platform.url, platform.secrets["publisher"], WS, run_id,
                approval_id, str(timeout_s), *(["--forge"] if forge else [])]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []

    def until(self, step: str, timeout: float = 30) -> dict[str, Any]:
        """The first line of ``step`` (reading the agent's output as it comes)."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((x for x in self.lines if x["step"] == step), None)
            if found is not None:
                return found
            assert time.monotonic() < deadline, f"agent never reached {step}: {self.lines}"
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                assert self.proc.poll() is None or step in [x["step"] for x in self.lines], (
                    f"agent ended before {step}: {self.lines} {self.proc.stderr.read() if self.proc.stderr else ''}")
                time.sleep(0.02)
                continue
            self.lines.append(json.loads(line))

    def finish(self) -> dict[str, Any]:
        done = self.until("done")
        assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read() if self.proc.stderr else ""
        return done

    def posted(self) -> list[tuple[str, str]]:
        return [(x["type"], x["status"]) for x in self.lines if x["step"] == "posted"]


def _events(platform: Platform, run_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{platform.url}/v1/runs/{run_id}/events", headers=platform.auth("auditor"))
    assert r.status_code == 200, r.text
    return [e["event"] for e in r.json()["entries"]]


def _sign_in(driver: Any, platform: Platform) -> None:
    driver.get(platform.url + "/console/login?next=/console/approvals")
    driver.find_element(By.ID, "api-key").send_keys(platform.secrets["approver"])
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: "/console/approvals" in d.current_url)


def _card(driver: Any, platform: Platform, approval_id: str) -> Any:
    """The approval's card on the console's queue (reloading until it shows)."""
    def shown(d: Any) -> Any:
        d.get(platform.url + "/console/approvals")
        found = d.find_elements(By.ID, "approval-" + approval_id)
        return found[0] if found else False

    return wait_for(driver, shown, 20)


def test_a_person_approves_in_the_console_and_the_waiting_agent_goes_on_within_a_second(
        platform, browser) -> None:
    aid = "credit/4411/raise"  # a "/" in the id: encoded as one path segment by the agent
    agent = Agent(platform, "run-approve", aid)
    agent.until("waiting")
    _sign_in(browser, platform)
    card = _card(browser, platform, aid)
    card.find_element(By.CLASS_NAME, "reason").send_keys("customer verified by phone")
    clicked = time.time()
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    resumed = agent.until("resumed")
    assert resumed["status"] == "approved" and resumed["approval_id"] == aid
    assert resumed["at"] - clicked < 1.0, resumed["at"] - clicked
    assert resumed["decided_by"] == platform.identity("approver")
    text_of(browser, "flash", f"{aid} of run-approve approved by {platform.identity('approver')}")
    assert agent.finish()["outcome"] == "succeeded"
    assert agent.posted() == [("run.started", "accepted"), ("approval.requested", "accepted"),
                              ("approval.decided", "accepted"), ("run.completed", "accepted")]
    events = _events(platform, "run-approve")
    assert [(e["type"], e["agent"]["id"]) for e in events] == [
        ("run.started", "approval-agent"), ("approval.requested", "approval-agent"),
        ("approval.decided", "approval-agent"), ("run.completed", "approval-agent")]  # one writer
    assert events[2]["data"] == {"approval_id": aid, "decision": "approved", "by": platform.identity("approver"),
                                 "reason": "customer verified by phone"}
    got = httpx.get(f"{platform.url}/v1/approvals/{segment(aid)}", headers=platform.auth("auditor")).json()
    assert (got["status"], got["reason"], got["run_id"]) == ("approved", "customer verified by phone", "run-approve")
    again = httpx.post(f"{platform.url}/v1/approvals/{segment(aid)}/decision", json={"decision": "rejected"},
                       headers=platform.auth("approver"))
    assert again.status_code == 409 and "already decided" in again.json()["message"]


def test_a_person_rejects_in_the_console_and_the_agent_takes_its_not_approved_path(platform, browser) -> None:
    aid = "../victim-run/refund-999"  # climbs like a path: it must name only itself
    agent = Agent(platform, "run-reject", aid)
    agent.until("waiting")
    _sign_in(browser, platform)
    card = _card(browser, platform, aid)
    card.find_element(By.CLASS_NAME, "reason").send_keys("over the customer's limit")
    clicked = time.time()
    card.find_element(By.CSS_SELECTOR, "button.reject").click()
    resumed = agent.until("resumed")
    assert resumed["status"] == "rejected" and resumed["at"] - clicked < 1.0
    assert agent.finish()["outcome"] == "cancelled"
    events = _events(platform, "run-reject")
    assert events[2]["type"] == "approval.decided" and events[2]["data"]["decision"] == "rejected"
    assert events[2]["data"]["by"] == platform.identity("approver")


def test_a_decision_made_through_another_server_process_reaches_the_waiting_agent_within_a_second(
        platform) -> None:
    aid = "limit/./raise"
    agent = Agent(platform, "run-other-process", aid)  # waits on the first server
    agent.until("waiting")
    time.sleep(0.5)
    decided = time.time()
    r = httpx.post(f"{platform.other_url}/v1/approvals/{segment(aid)}/decision",
                   json={"decision": "approved", "reason": "second server"}, headers=platform.auth("approver"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["decided_by"] == platform.identity("approver")
    resumed = agent.until("resumed")
    assert resumed["status"] == "approved" and resumed["at"] - decided < 1.0, resumed["at"] - decided
    assert agent.finish()["outcome"] == "succeeded"


def test_an_undecided_approval_expires_and_can_no_longer_be_decided(platform) -> None:
    aid = "expires-soon"
    started = time.time()
    agent = Agent(platform, "run-expire", aid, timeout_s=1.5)
    resumed = agent.until("resumed")
    assert resumed["status"] == "expired" and 1.4 < resumed["at"] - started < 10
    assert agent.finish()["outcome"] == "escalated"
    assert agent.posted() == [("run.started", "accepted"), ("approval.requested", "accepted"),
                              ("run.completed", "accepted")]
    late = httpx.post(f"{platform.url}/v1/approvals/{segment(aid)}/decision", json={"decision": "approved"},
                      headers=platform.auth("approver"))
    assert late.status_code == 409 and "expired" in late.json()["message"]


def test_an_approval_no_person_made_is_quarantined_and_the_run_waits_for_a_real_one(platform) -> None:
    aid = "forged/one"
    agent = Agent(platform, "run-forged", aid, forge=True)
    agent.until("waiting")
    forged = [x for x in agent.lines if x["step"] == "posted" and x["type"] == "approval.decided"]
    assert forged[0]["status"] == "quarantined"
    assert "no person decided" in forged[0]["reason"]
    r = httpx.post(f"{platform.url}/v1/approvals/{segment(aid)}/decision",
                   json={"decision": "approved", "reason": "checked"}, headers=platform.auth("approver"))
    assert r.status_code == 200, r.text
    assert agent.finish()["outcome"] == "succeeded"
    q = httpx.get(f"{platform.url}/v1/quarantine", headers=platform.auth("auditor")).json()["items"]
    mine = [i for i in q if i["run_id"] == "run-forged"]
    assert len(mine) == 1 and "no person decided" in mine[0]["reason"]


def test_approvals_are_workspace_private_and_listed_for_approvers(platform) -> None:
    aid = "private/approval"
    agent = Agent(platform, "run-private", aid)
    agent.until("waiting")
    path = f"/v1/approvals/{segment(aid)}"
    theirs = httpx.get(platform.url + path, headers=platform.auth("globex-approver"))
    missing = httpx.get(platform.url + "/v1/approvals/no-such", headers=platform.auth("globex-approver"))
    assert theirs.status_code == missing.status_code == 404
    assert httpx.post(platform.url + path + "/decision", json={"decision": "approved"},
                      headers=platform.auth("globex-approver")).status_code == 404
    assert httpx.post(platform.url + path + "/decision", json={"decision": "approved"},
                      headers=platform.auth("publisher")).status_code == 403
    queue = httpx.get(platform.url + "/v1/approvals", headers=platform.auth("approver")).json()["approvals"]
    assert aid in [a["approval_id"] for a in queue] and all(a["status"] == "pending" for a in queue)
    assert httpx.get(platform.url + "/v1/approvals", headers=platform.auth("globex-approver")).json() == {
        "approvals": [], "next_cursor": None}
    r = httpx.post(platform.url + path + "/decision", json={"decision": "rejected", "reason": "no"},
                   headers=platform.auth("approver"))
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert agent.finish()["outcome"] == "cancelled"
    decided = httpx.get(platform.url + "/v1/approvals", params={"status": "decided"},
                        headers=platform.auth("auditor")).json()["approvals"]
    assert aid in [a["approval_id"] for a in decided]


def test_afterwards_the_ledger_verifies_and_only_the_forgery_was_quarantined(platform) -> None:
    # last in this module: every earlier test's agent has finished
    verdict = json.loads(tacho(platform.data_dir, "verify", "--json", "--allow-unsigned-tail").stdout)
    assert verdict["ok"], verdict
    assert verdict["approvals_checked_from"] == 0
    q = httpx.get(f"{platform.url}/v1/quarantine", headers=platform.auth("auditor")).json()["items"]
    assert [(i["run_id"], "no person decided" in i["reason"]) for i in q] == [("run-forged", True)]
