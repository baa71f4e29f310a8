"""``tacho serve`` as a real subprocess: it signs its tail and expires held events while it serves."""

from __future__ import annotations

import json
import re
import socket
import subprocess
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


def _start(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """``tacho serve`` on a free port (settings from the environment), once it answers."""
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


def _terminate(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, as a service manager stops it: uvicorn shuts down cleanly, then re-raises SIGTERM."""
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -15) and "Traceback" not in err, err


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """``tacho serve`` on a free port with a short checkpoint interval and hold timeout."""
    monkeypatch.setenv("TACHO_CHECKPOINT_INTERVAL_S", "0.5")
    monkeypatch.setenv("TACHO_HELD_TIMEOUT_S", "1")
    data_dir = tmp_path / "data"
    tacho(data_dir, "keys")  # creates the ledger's key before the server starts
    proc, url = _start(data_dir)
    yield data_dir, url
    _terminate(proc)


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


def _post(url: str, key: dict[str, str], events: list[dict]) -> None:
    r = httpx.post(url + "/v1/events", content=b"[" + b",".join(dumps(e) for e in events) + b"]",
                   headers={**key, "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text


def test_a_server_stopped_with_sigterm_signs_its_tail_so_the_ledger_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TACHO_CHECKPOINT_INTERVAL_S", "3600")  # no checkpoint falls due while it serves
    monkeypatch.setenv("TACHO_CHECKPOINT_EVERY", "1000000")
    data_dir = tmp_path / "data"
    tacho(data_dir, "keys")
    proc, url = _start(data_dir)
    try:
        pub, aud = _key(data_dir, "publisher"), _key(data_dir, "auditor")
        _post(url, pub, [event("r1", 0)])  # a fresh ledger's first append is signed at once
        _post(url, pub, [event("r1", 1, "run.completed", {"outcome": "succeeded"}), event("r2", 0)])
        assert httpx.get(url + "/v1/runs", headers=aud).status_code == 200  # an audit record too
        unsigned = tacho(data_dir, "verify", "--json", check=False)
        assert unsigned.returncode != 0 and "not covered by any signed checkpoint" in unsigned.stdout
    finally:
        _terminate(proc)
    verdict = tacho(data_dir, "verify", "--json", check=False)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    result = json.loads(verdict.stdout)
    assert result["ok"] and result["entries"] == result["checkpoint_size"] == 4  # 3 events, 1 audit record


def _verifications(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    return {k: float(v) for k, v in re.findall(r'^tacho_log_verifications_total\{kind="(\w+)"\} (\S+)$', text, re.M)}


def _verified(url: str, aud: dict[str, str]) -> dict:
    """The verification status once it covers the whole ledger."""
    def status() -> dict | None:
        r = httpx.get(url + "/v1/log/verification", headers=aud)
        if r.status_code == 503:  # the first round of a server that just started
            return None
        body = r.json()
        return body if body["entries"] == body["ledger_size"] and not body["running"] else None

    found = _until(status)
    assert found is not None, "the verification status never caught up with the ledger"
    return found


def test_a_restarted_server_verifies_the_whole_ledger_once_then_only_what_is_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TACHO_VERIFY_INTERVAL_S", "0.2")
    data_dir = tmp_path / "data"
    tacho(data_dir, "keys")
    pub, aud = _key(data_dir, "publisher"), _key(data_dir, "auditor")
    for restart in range(2):
        proc, url = _start(data_dir)
        try:
            first = _verified(url, aud)
            assert first["ok"] and first["kind"] == "full" and first["verified_from"] == 0
            for batch in range(2):
                run = f"r{restart}{batch}"
                _post(url, pub, [event(run, 0), event(run, 1, "run.completed", {"outcome": "succeeded"})])
                status = _verified(url, aud)
                assert status["ok"] and status["kind"] == "incremental", status
                assert status["verified_from"] < status["entries"]
            counts = _verifications(url)
            assert counts["full"] == 1 and counts["incremental"] >= 2, counts
        finally:
            _terminate(proc)
