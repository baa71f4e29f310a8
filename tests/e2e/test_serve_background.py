"""``tacho serve`` as a real subprocess: it signs its tail and expires held events while it serves."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tachograph.contract.canonical import dumps
from tests.cli_support import start_tacho, tacho
from tests.factories import event


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key(data_dir: Path, role: str) -> dict[str, str]:
    out = json.loads(tacho(data_dir, "apikey", "create", "--workspace", "acme", "--role", role, "--json").stdout)
    return {"Authorization": f"Bearer {out['secret']}"}


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """``tacho serve`` on a free port with a short checkpoint interval and hold timeout."""
    monkeypatch.setenv("TACHO_CHECKPOINT_INTERVAL_S", "0.5")
    monkeypatch.setenv("TACHO_HELD_TIMEOUT_S", "1")
    data_dir = tmp_path / "data"
    tacho(data_dir, "keys")  # creates the ledger's key before the server starts
    port = _free_port()
    proc = start_tacho(data_dir, "serve", "--port", str(port), "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "tacho serve did not start"
        time.sleep(0.1)
    yield data_dir, url
    proc.terminate()  # uvicorn shuts down cleanly, then re-raises SIGTERM (exit -15)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -15) and "Traceback" not in err, err


def _until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_a_ledger_fed_only_over_http_verifies_without_an_unsigned_tail_while_served(served) -> None:
    data_dir, url = served
    pub, aud = _key(data_dir, "publisher"), _key(data_dir, "auditor")
    events = [event("r1", 0), event("r1", 1, "run.completed", {"outcome": "succeeded"})]
    r = httpx.post(url + "/v1/events", content=b"[" + b",".join(dumps(e) for e in events) + b"]",
                   headers={**pub, "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["accepted"] == 2
    assert httpx.get(url + "/v1/runs", headers=aud).status_code == 200  # an audit record too
    size = 3

    def signed() -> bool:
        cp = httpx.get(url + "/v1/log/checkpoint", headers=aud)
        return cp.status_code == 200 and cp.json()["size"] >= size

    assert _until(signed), "the tail was never signed while serving"
    verdict = tacho(data_dir, "verify", "--json", check=False)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert json.loads(verdict.stdout)["ok"] is True


def test_a_held_event_whose_gap_never_fills_is_quarantined_as_a_gap_while_served(served) -> None:
    data_dir, url = served
    pub, aud = _key(data_dir, "publisher"), _key(data_dir, "auditor")
    events = [event("gappy", 0), event("gappy", 2, "run.completed", {"outcome": "succeeded"})]
    r = httpx.post(url + "/v1/events", content=b"[" + b",".join(dumps(e) for e in events) + b"]",
                   headers={**pub, "Content-Type": "application/json"})
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "held"]

    def gaps() -> list[dict]:
        items = httpx.get(url + "/v1/quarantine", headers=aud).json()["items"]
        return [i for i in items if i["reason"].startswith("gap:")]

    found = _until(gaps)
    assert len(found) == 1 and "gappy" in found[0]["reason"] and '"seq":2' in found[0]["raw"]
    assert [x["status"] for x in httpx.post(
        url + "/v1/events", content=dumps([events[1]]),
        headers={**pub, "Content-Type": "application/json"}).json()["results"]] == ["held"]  # held anew
