"""A real console server for browser tests: a prepared data dir, keys per role, uvicorn on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.bootstrap import build_ledger
from api.console.board import ChangeItem
from api.keys_store import KeyStore
from api.settings import Settings
from domain.ledger import Ledger
from domain.ports import Incoming, Source
from domain.workload import Workload
from tachograph.contract.canonical import dumps, loads
from tests.factories import event

WS = "acme"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
PEOPLE = {
    "auditor": "Ada Auditor",
    "analyst": "Ana Analyst",
    "engineer": "Eli Engineer",
    "admin": "Ari Admin",
    "approver": "Pat Approver",
    "publisher": "",
}
HOOKED_WORKFLOW = "billing-ops"


def _ev(run: str, seq: int, etype: str, data: dict[str, Any], workflow_time: str) -> dict[str, Any]:
    e = event(run, seq, etype, data, workspace=WS)
    e["time"] = f"{workflow_time}:{seq:02d}Z"
    e["agent"] = {"id": "billing-agent", "version": "3.1.0"}
    return e


def pending_run(run: str, approval: str, change: str, risk: str, when: str) -> list[dict[str, Any]]:
    """An open run whose change waits for a person's approval."""
    return [
        _ev(run, 0, "run.started", {"workflow": HOOKED_WORKFLOW, "mode": "execute", "risk_tier": risk,
                                    "budget": {"max_model_calls": 4, "max_cost_usd": "0.05"}}, when),
        _ev(run, 1, "model.called", {"call_id": "m1", "provider": "openai", "model": "gpt-4.1-mini",
                                     "input_tokens": 900, "output_tokens": 120, "cost_usd": "0.000552",
                                     "latency_ms": 640}, when),
        _ev(run, 2, "change.proposed", {"change_id": change, "target": "crm.customer/4411",
                                        "before": {"credit_limit": 500, "tier": "silver"},
                                        "after": {"credit_limit": 2500, "tier": "silver"},
                                        "reversible": True}, when),
        _ev(run, 3, "policy.evaluated", {"policy": "credit-limit", "action": "crm.update",
                                         "decision": "require_approval", "reason": "raise over $1,000",
                                         "risk_score": 0.7}, when),
        _ev(run, 4, "approval.requested", {"approval_id": approval, "risk": risk, "change_id": change,
                                           "summary": f"raise credit limit of customer 4411 to 2500 ({run})"},
            when),
    ]


def applied_run(run: str, change: str, reversible: bool, when: str) -> list[dict[str, Any]]:
    """An open run with one applied change (reversible or not)."""
    return [
        _ev(run, 0, "run.started", {"workflow": HOOKED_WORKFLOW, "mode": "execute", "risk_tier": "low"}, when),
        _ev(run, 1, "change.proposed", {"change_id": change, "target": f"billing.invoice/{run}",
                                        "before": {"status": "open", "amount": "120.00"},
                                        "after": {"status": "void" if reversible else "sent",
                                                  "amount": "120.00"},
                                        "reversible": reversible}, when),
        _ev(run, 2, "change.applied", {"change_id": change}, when),
    ]


def completed_run(run: str, change: str, when: str) -> list[dict[str, Any]]:
    """A completed run with one applied, reversible change (its revert needs a compensating run)."""
    return [*applied_run(run, change, True, when),
            _ev(run, 3, "run.completed", {"outcome": "succeeded", "result": {"voided": 1}}, when)]


@dataclass
class ConsoleServer:
    """A console served by uvicorn over a prepared data dir."""

    url: str
    data_dir: Path
    ledger: Ledger
    secrets: dict[str, str]
    key_ids: dict[str, str]
    reverted: list[tuple[str, str, str | None]] = field(default_factory=list)

    def identity(self, role: str) -> str:
        """The ``by`` the console writes for the role's person."""
        return f"{PEOPLE[role]} (apikey:{self.key_ids[role]})"

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """A run's stored events."""
        return [loads(r.data)["event"] for r in self.ledger.store.run_entries(WS, run_id)]

    def records(self, record_type: str) -> list[dict[str, Any]]:
        """The workspace's platform records of one type (each the entry's ``record`` member)."""
        rows = self.ledger.store.records(WS, limit=10**6, record_type=record_type)
        return [loads(r.data)["record"] for r in rows]

    def console_actions(self) -> list[dict[str, Any]]:
        """The console's reads and actions recorded as platform records (data of each, with key_id)."""
        out = []
        for row in self.ledger.store.records(WS, limit=10**6):
            rec = loads(row.data)["record"]
            if str(rec["data"].get("action", "")).startswith("console."):
                out.append({**rec["data"], "key_id": rec["actor"]["key_id"], "type": rec["type"]})
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _record_examples(ledger: Ledger, data_dir: Path) -> None:
    """Live triage runs on the simulated model (through the agent runtime; the demo's stand-in
    person decides their approvals through the platform) and a what-if replay of them (a stored
    report)."""
    from examples import triage
    from replay.demo import record_examples
    from replay.engine import ReplayConfig, run_replay
    from replay.history import load_runs
    from replay.report import Gate
    from replay.steps import StepConfig, run_step_replay
    from replay.store import ReplayReports
    from tachograph.agents import load_agent
    from tachograph.models import ModelRegistry

    agent = load_agent("examples.triage:triage")
    models = ModelRegistry()
    run_ids = record_examples(ledger, WS, "examples.triage:triage", triage.inputs(12, salt="console"),
                              prefix="triage", models=models, clock=time.time)
    recorded = load_runs(ledger.store, run_ids=run_ids)
    config = ReplayConfig("whatif-large", "2026-11-20T10:00:00Z", candidate_model="sim-large-v2",
                          gate=Gate(max_cost_increase=None))
    ReplayReports(data_dir / "replays").save(run_replay(recorded, agent, config, models, ledger=ledger))
    steps = StepConfig("steps-large", "2026-11-20T09:00:00Z", "sim-large-v2")
    ReplayReports(data_dir / "replays").save(run_step_replay(recorded, steps, models))


def prepare(data_dir: Path) -> tuple[Settings, Ledger, KeyStore, dict[str, str], dict[str, str]]:
    """A data dir with workload runs, example runs, a replay report, open runs and projections."""
    from projections.demo import analytics_path
    from projections.projector import open_projector

    settings = Settings(data_dir=data_dir, checkpoint_interval_s=0.5)
    ledger = build_ledger(settings)
    raws = [dumps(e) for e in Workload(seed=11, runs=60, workspaces=(WS,)).events()]
    ledger.append([Incoming(r, Source(kind="file", name="workload.jsonl", line=n)) for n, r in enumerate(raws, 1)])
    _record_examples(ledger, data_dir)
    hand = [
        *pending_run("pend-approve", "ap-1", "ch-credit-1", "high", "2026-11-20T09:00"),
        *pending_run("pend-reject", "ap-2", "ch-credit-2", "medium", "2026-11-20T09:05"),
        *pending_run("pend-nocsrf", "ap-3", "ch-credit-3", "low", "2026-11-20T09:10"),
        *applied_run("open-void", "ch-void-1", True, "2026-11-20T09:20"),
        *applied_run("open-void-fails", "ch-void-2", True, "2026-11-20T09:25"),
        *applied_run("open-sent", "ch-send-1", False, "2026-11-20T09:30"),
        *completed_run("done-void", "ch-void-done", "2026-11-20T09:35"),
    ]
    report = ledger.append([Incoming(dumps(e), Source(kind="file", name="hand.jsonl")) for e in hand])
    assert report.accepted == len(hand), report.results
    ledger.checkpoint(force=True)
    with open_projector(ledger.store, analytics_path(data_dir)) as projector:
        projector.catch_up()
    keys = KeyStore(data_dir / "keys" / "apikeys.db", time.time)
    secrets, ids = {}, {}
    for role, name in PEOPLE.items():
        key, secrets[role] = keys.create(WS, role, label=name)
        ids[role] = key.id
    return settings, ledger, keys, secrets, ids


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    """The console app under uvicorn on a free 127.0.0.1 port (what ``tacho serve`` runs)."""
    data_dir = tmp_path_factory.mktemp("console") / "data"
    settings, ledger, keys, secrets, ids = prepare(data_dir)
    app = create_app(settings, ledger=ledger, keys=keys)
    server_info = ConsoleServer("", data_dir, ledger, secrets, ids)

    def hook(change: ChangeItem, by: str, reason: str | None) -> None:
        if change.change_id == "ch-void-2":
            raise RuntimeError("billing system refused: invoice already paid")
        server_info.reverted.append((change.change_id, by, reason))

    app.state.console.revert_hooks = {HOOKED_WORKFLOW: hook}
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="console-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    server_info.url = f"http://127.0.0.1:{port}"
    assert httpx.get(server_info.url + "/healthz").status_code == 200
    yield server_info
    server.should_exit = True
    thread.join(timeout=10)
    ledger.store.close()


def shot(driver: Any, name: str) -> Path:
    """Save a full-page screenshot of the current page under artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 2400)")
    driver.set_window_size(1280, max(900, int(height)))
    path = SCREENSHOTS / f"console-{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    return path


def sign_in(driver: Any, server: ConsoleServer, role: str, path: str = "/console/") -> None:
    """Sign in through the login form with the role's key."""
    from selenium.webdriver.common.by import By

    driver.get(server.url + "/console/login?next=" + path)
    driver.find_element(By.ID, "api-key").send_keys(server.secrets[role])
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: "/console/login" not in d.current_url)


def wait_for(driver: Any, condition: Any, timeout: float = 10.0) -> Any:
    """Wait until ``condition(driver)`` is truthy."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    def guarded(d: Any) -> Any:
        try:
            return condition(d)
        except WebDriverException as e:
            # Chromium's word for a stale element read during a page load or an htmx swap
            if "does not belong to the document" in str(e.msg):
                return False
            raise

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(guarded)


def text_of(driver: Any, element_id: str, needle: str, timeout: float = 10.0) -> str:
    """Wait until the element's text contains ``needle`` (across page loads); return the text."""
    from selenium.webdriver.common.by import By

    found: list[str] = []

    def has(d: Any) -> bool:
        text = str(d.find_element(By.ID, element_id).text)
        found[:] = [text]
        return needle in text

    wait_for(driver, has, timeout)
    return found[0]
