"""Webhooks end to end: ``tacho serve`` and a receiver, each its own OS process, sharing only HTTP.

Events are published over ``POST /v1/events`` with a publisher key; the receiver
(``tests/harness/webhook_receiver.py``) checks every signature with the endpoint's secret.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tachograph.contract.canonical import dumps
from tests.cli_support import ROOT, start_tacho, tacho
from tests.factories import event
from tests.harness import free_port, terminate, wait_until

RECEIVER = ROOT / "tests" / "harness" / "webhook_receiver.py"


class Receiver:
    """The receiver process and its control calls."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(RECEIVER), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: httpx.get(self.url + "/_control/log").status_code == 200, 15,
                   what="the webhook receiver")

    def hook(self, name: str) -> str:
        return f"{self.url}/hooks/{name}"

    def configure(self, name: str, secret: str, fail_first: int = 0, delay: float = 0.0) -> None:
        r = httpx.post(self.url + "/_control/config",
                       json={"name": name, "secret": secret, "fail_first": fail_first, "delay": delay})
        assert r.status_code == 200

    def log(self, name: str | None = None) -> list[dict[str, Any]]:
        seen = httpx.get(self.url + "/_control/log").json()
        return [r for r in seen if name is None or r["name"] == name]

    def delivered(self, name: str) -> dict[str, dict[str, Any]]:
        """Notification id -> the request the receiver answered 200."""
        return {r["id"]: r for r in self.log(name) if r["status"] == 200}


class Server:
    """``tacho serve`` over one data directory, restartable."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        tacho(data_dir, "keys")  # the ledger's key, before the server starts

    def start(self) -> None:
        self.proc = start_tacho(self.data_dir, "serve", "--port", str(self.port), "--log-level", "warning")
        proc = self.proc

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            return httpx.get(self.url + "/healthz").status_code == 200

        wait_until(up, 30, what="tacho serve", retry_on=(httpx.TransportError,))

    def stop(self) -> str:
        assert self.proc is not None
        self.proc.terminate()  # uvicorn shuts down cleanly, then re-raises SIGTERM (exit -15)
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode in (0, -15) and "Traceback" not in err, err
        self.proc = None
        return err

    def key(self, role: str, workspace: str = "acme") -> dict[str, str]:
        out = json.loads(tacho(self.data_dir, "apikey", "create", "--workspace", workspace, "--role", role,
                               "--json").stdout)
        return {"Authorization": f"Bearer {out['secret']}"}

    def publish(self, key: dict[str, str], events: list[dict[str, Any]]) -> None:
        r = httpx.post(self.url + "/v1/events", content=dumps(events),
                       headers={**key, "Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text

    def add_webhook(self, admin: dict[str, str], url: str, kinds: list[str] | None = None) -> tuple[str, str]:
        body: dict[str, Any] = {"url": url, "description": "test"}
        if kinds is not None:
            body["kinds"] = kinds
        r = httpx.post(self.url + "/v1/webhooks", json=body, headers=admin)
        assert r.status_code == 201, r.text
        return r.json()["webhook"]["id"], r.json()["secret"]

    def deliveries(self, key: dict[str, str], webhook_id: str, **params: Any) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/v1/webhooks/{webhook_id}/deliveries", headers=key, params=params)
        assert r.status_code == 200, r.text
        return r.json()["items"]  # type: ignore[no-any-return]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    terminate(rec.proc)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A served data dir whose webhooks retry fast: 4 attempts, 0.3 s doubling to at most 1 s."""
    for name, value in {"ALLOW_PRIVATE": "1", "MAX_ATTEMPTS": "4", "BACKOFF_S": "0.3",
                        "BACKOFF_MAX_S": "1", "TIMEOUT_S": "1.5"}.items():
        monkeypatch.setenv(f"TACHO_WEBHOOK_{name}", value)
    srv = Server(tmp_path / "data")
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def failed_run(run_id: str, workspace: str = "acme") -> list[dict[str, Any]]:
    """A run that asks for an approval, crosses its cost budget and fails."""
    return [
        event(run_id, 0, workspace=workspace),
        event(run_id, 1, "approval.requested",
              {"approval_id": f"{run_id}-a1", "summary": "refund 120 EUR", "risk": "high"}, workspace=workspace),
        event(run_id, 2, "budget.exceeded", {"limit": "cost_usd", "limit_value": 0.5, "observed": 0.61},
              workspace=workspace),
        event(run_id, 3, "run.completed", {"outcome": "failed", "error": "budget"}, workspace=workspace),
    ]


def test_signed_notifications_reach_a_receiver_in_another_process_through_retries(
    server: Server, receiver: Receiver
) -> None:
    admin, auditor, pub = server.key("admin"), server.key("auditor"), server.key("publisher")
    flaky, flaky_secret = server.add_webhook(admin, receiver.hook("flaky"))
    failures, failures_secret = server.add_webhook(admin, receiver.hook("failures"), ["run.failed"])
    receiver.configure("flaky", flaky_secret, fail_first=2)
    receiver.configure("failures", failures_secret)
    ok_run = [event("fine", 0), event("fine", 1, "run.completed", {"outcome": "succeeded"})]
    server.publish(pub, failed_run("r1") + ok_run)

    got = wait_until(lambda: len(receiver.delivered("flaky")) == 3 and receiver.delivered("flaky"), 30,
                     what="three notifications delivered through two 500s each")
    assert sorted(r["body"]["kind"] for r in got.values()) == ["approval.requested", "budget.exceeded",
                                                               "run.failed"]
    seen = receiver.log("flaky")
    assert all(r["verified"] for r in seen), [r["reason"] for r in seen]
    assert len(seen) == 9 and sorted(r["attempt"] for r in seen) == ["1"] * 3 + ["2"] * 3 + ["3"] * 3
    requested = next(r["body"] for r in got.values() if r["body"]["kind"] == "approval.requested")
    assert requested["workspace"] == "acme" and requested["run_id"] == "r1"
    assert requested["data"] == {"approval_id": "r1-a1", "summary": "refund 120 EUR", "risk": "high"}
    assert all(i == r["body"]["id"] for i, r in got.items())  # the header names the body's id
    assert requested["time"] == "2026-01-01T00:00:01Z" and requested["source"]["type"] == "approval.requested"
    assert got[next(i for i, r in got.items() if r["body"]["kind"] == "run.failed")]["content_type"] == (
        "application/json")

    only_failed = wait_until(lambda: receiver.delivered("failures"), 15, what="the run.failed endpoint")
    assert [r["body"]["kind"] for r in only_failed.values()] == ["run.failed"]
    assert all(r["verified"] for r in receiver.log("failures"))

    def all_delivered() -> list[dict[str, Any]] | None:
        rows = server.deliveries(admin, flaky)
        return rows if len(rows) == 3 and all(d["status"] == "delivered" for d in rows) else None

    rows = wait_until(all_delivered, 15, what="status delivered")
    assert all(d["attempts"] == 3 and d["last_status"] == 200 and d["next_attempt"] is None for d in rows)
    assert {d["notification_id"] for d in rows} == set(got)
    assert len(server.deliveries(auditor, failures)) == 1  # auditors read the status too
    listed = httpx.get(server.url + "/v1/webhooks", headers=auditor).json()
    assert {w["id"] for w in listed} == {flaky, failures}
    assert all(w["url"].endswith("/…") and "hooks" not in w["url"] for w in listed)  # cut for auditors
    assert all("secret" not in w for w in listed)
    refused = httpx.get(f"{server.url}/v1/webhooks/{flaky}/deliveries", headers=pub)
    assert refused.status_code == 403


def test_a_dead_endpoint_fails_after_the_last_attempt_while_other_workspaces_get_theirs(
    server: Server, receiver: Receiver
) -> None:
    admin, pub = server.key("admin"), server.key("publisher")
    beta_admin, beta_pub = server.key("admin", "beta"), server.key("publisher", "beta")
    dead, dead_secret = server.add_webhook(admin, receiver.hook("dead"), ["approval.requested"])
    slow, slow_secret = server.add_webhook(admin, receiver.hook("slow"), ["approval.requested"])
    beta, beta_secret = server.add_webhook(beta_admin, receiver.hook("beta"), ["approval.requested"])
    receiver.configure("dead", dead_secret, fail_first=-1)
    receiver.configure("slow", slow_secret, delay=5)  # longer than the 1.5 s timeout: never answers in time
    receiver.configure("beta", beta_secret)
    server.publish(pub, failed_run("doomed")[:2])
    wait_until(lambda: receiver.log("dead"), 15, what="a first attempt")
    server.publish(beta_pub, failed_run("b1", "beta")[:2])

    wait_until(lambda: receiver.delivered("beta"), 3, what="beta's notification while acme's endpoints fail")
    assert [d["status"] for d in server.deliveries(admin, slow)] == ["pending"]  # still timing out

    def ended() -> list[dict[str, Any]] | None:
        rows = server.deliveries(admin, dead) + server.deliveries(admin, slow)
        return rows if all(d["status"] == "failed" for d in rows) else None

    rows = wait_until(ended, 40, what="both acme deliveries failed")
    assert all(d["attempts"] == 4 and d["next_attempt"] is None for d in rows)
    dead_row = next(d for d in rows if d["endpoint_id"] == dead)
    slow_row = next(d for d in rows if d["endpoint_id"] == slow)
    assert dead_row["last_status"] == 500 and dead_row["last_error"] == "HTTP 500"
    assert slow_row["last_status"] is None and "Timeout" in slow_row["last_error"]
    assert len(receiver.log("dead")) == 4 and all(r["verified"] for r in receiver.log("dead"))
    assert server.deliveries(beta_admin, beta)[0]["status"] == "delivered"
    assert httpx.get(f"{server.url}/v1/webhooks/{beta}/deliveries", headers=admin).status_code == 404
    summary = httpx.get(f"{server.url}/v1/webhooks/{dead}", headers=admin).json()
    assert summary["deliveries"] == {"pending": 0, "delivered": 0, "failed": 1}
    logged = server.stop()
    assert "attempt 4 HTTP 500; failed" in logged  # failures are logged, by endpoint host only
    assert dead_secret not in logged and slow_secret not in logged and "/hooks/" not in logged


def test_a_restart_of_tacho_serve_neither_loses_nor_repeats_notifications(
    server: Server, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TACHO_WEBHOOK_MAX_ATTEMPTS", "100")
    server.stop()
    server.start()  # with room for retries across the restart
    admin, pub = server.key("admin"), server.key("publisher")
    later, later_secret = server.add_webhook(admin, receiver.hook("later"), ["approval.requested", "run.failed"])
    now, now_secret = server.add_webhook(admin, receiver.hook("now"), ["approval.requested", "run.failed"])
    receiver.configure("later", later_secret, fail_first=-1)  # down for now
    receiver.configure("now", now_secret)
    server.publish(pub, failed_run("before")[:2])
    wait_until(lambda: receiver.log("later") and [d["status"] for d in server.deliveries(admin, now)]
               == ["delivered"], 15, what="a first attempt, and a delivery recorded")
    server.stop()

    offline = tmp_path / "offline.jsonl"  # appended by another process while nothing serves
    offline.write_text("".join(dumps(e).decode() + "\n" for e in failed_run("during")))
    tacho(server.data_dir, "import", str(offline))
    receiver.configure("later", later_secret)  # back up
    server.start()

    want = {"approval.requested": 2, "run.failed": 1}
    for name in ("later", "now"):
        got = wait_until(lambda n=name: (d := receiver.delivered(n)) and len(d) == 3 and d, 30,
                         what=f"{name}: every notification after the restart")
        kinds = [r["body"]["kind"] for r in got.values()]
        assert {k: kinds.count(k) for k in want} == want
        assert {r["body"]["run_id"] for r in got.values()} == {"before", "during"}
    oks = [r["id"] for r in receiver.log("now") if r["status"] == 200]
    assert len(oks) == len(set(oks)) == 3  # none sent again after the restart
    assert all(r["verified"] for r in receiver.log())
    rows = server.deliveries(admin, later)
    assert len(rows) == 3 and all(d["status"] == "delivered" for d in rows)
