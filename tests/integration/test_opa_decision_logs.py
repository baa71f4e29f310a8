"""Tachograph as OPA's decision log, against a real Open Policy Agent.

OPA runs with a configuration whose ``services`` points at the API (under uvicorn) and whose
``decision_logs`` uploads there with a publisher key as its bearer token. Decisions are asked of
OPA's REST API directly, as a service that does not use the Tachograph runtime would.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.verify import verify_log
from tachograph.contract.canonical import loads
from tests.harness import free_port
from tests.integration.api_support import Api, close_api, make_api, serving

pytestmark = pytest.mark.opa

POLICIES = Path(__file__).resolve().parents[1] / "policies"
REVISION = "refunds-2024-06-01"


@pytest.fixture
def logged_api(tmp_path: Path) -> Iterator[Api]:
    """An API over a fresh data dir (served under uvicorn by each test)."""
    a = make_api(tmp_path)
    yield a
    close_api(a)


def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(POLICIES / "refunds.rego", bundle / "refunds.rego")
    (bundle / ".manifest").write_text(json.dumps({"revision": REVISION, "roots": ["tachograph"]}))
    return bundle


def _config(tmp_path: Path, api_url: str, token: str) -> Path:
    """OPA's configuration: decision logs uploaded to Tachograph every 1-2 s."""
    config = {
        "labels": {"app": "checkout"},
        "services": {"tacho": {"url": api_url, "credentials": {"bearer": {"token": token}}}},
        "decision_logs": {"service": "tacho", "resource": "/v1/opa/logs",
                          "reporting": {"min_delay_seconds": 1, "max_delay_seconds": 2}},
    }
    path = tmp_path / "opa-config.json"
    path.write_text(json.dumps(config))
    return path


def ask(opa_url: str, amount: int) -> str:
    """A refund decision from OPA's Data API; its decision id."""
    body = json.dumps({"input": {"tool": "refund", "arguments": {"amount": amount}}}).encode()
    req = urllib.request.Request(f"{opa_url}/v1/data/tachograph/decision", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        answer = json.load(r)
    return str(answer["decision_id"])


def opa_events(a: Api) -> list[dict[str, Any]]:
    """The policy.evaluated events of the workspace's OPA runs, with their source kinds."""
    out = []
    for row in a.ledger.store.raw_entries():
        entry = loads(row[1])
        event = entry.get("event") if isinstance(entry, dict) else None
        if event and event["run_id"].startswith("opa.") and event["type"] == "policy.evaluated":
            out.append({**event, "_source": entry["source"]["kind"], "_ws": event["workspace"]})
    return out


def wait_for(a: Api, ids: set[str], timeout: float = 30) -> list[dict[str, Any]]:
    """The OPA events once every decision id in ``ids`` is in the ledger (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        events = opa_events(a)
        if ids <= {e["data"]["decision_id"] for e in events}:
            return events
        assert time.monotonic() < deadline, f"decisions not in the ledger: {ids - {e['data']['decision_id'] for e in events}}"
        time.sleep(0.2)


def test_opa_uploads_its_decisions_into_the_keys_workspace_once_and_the_ledger_verifies(
        logged_api: Api, opa_server, tmp_path: Path) -> None:
    a = logged_api
    port = free_port()
    with serving(a.app, port) as url:
        opa = opa_server(bundle=_bundle(tmp_path), config=_config(tmp_path, url, a.secrets["publisher"]))
        asked = {ask(opa.url, 40): "allow", ask(opa.url, 250): "require_approval",
                 ask(opa.url, 5000): "deny"}
        events = wait_for(a, set(asked))
        # stopping OPA flushes what it holds; a decision made just before must land too
        asked[ask(opa.url, 60)] = "allow"
        opa.stop()
        events = wait_for(a, set(asked), timeout=10)
    # the API is down: OPA buffers its decisions and uploads them when the API is back
    opa.start()
    asked[ask(opa.url, 700)] = "require_approval"
    time.sleep(3)  # at least one failed upload attempt
    with serving(a.app, port):
        events = wait_for(a, set(asked))
        opa.restart()
        time.sleep(3)
    events = opa_events(a)
    by_id = {e["data"]["decision_id"]: e for e in events}
    assert Counter(e["data"]["decision_id"] for e in events) == Counter(set(asked)), "duplicates"
    for did, decision in asked.items():
        e = by_id[did]
        assert e["data"]["decision"] == decision
        assert e["data"]["revision"] == REVISION
        assert e["data"]["policy"] == "tachograph/decision"
        assert e["data"]["action"] == "refund"
        assert (e["_ws"], e["_source"], e["agent"]["id"]) == ("acme", "opa", "opa")
        assert e["event_id"] == f"opa-{did}"
    assert "refund of 5000 is above the limit of 1000" in {e["data"]["reason"] for e in events}
    runs = {e["run_id"] for e in events}
    assert len(runs) == 1 and next(iter(runs)).startswith("opa.tachograph.decision.")
    run = a.ledger.store.run_entries("acme", next(iter(runs)))
    assert [r.seq for r in run] == list(range(len(asked) + 1)), "one contiguous run"
    # listed like any run
    r = a.client.get("/v1/runs", params={"workflow": "tachograph/decision", "has_denial": "true"},
                     headers=a.auth("auditor"))
    assert r.status_code == 200, r.text
    listed = r.json()["runs"]
    assert [x["run_id"] for x in listed] == [next(iter(runs))]
    assert listed[0]["origin"] == "production"
    r = a.client.get(f"/v1/runs/{next(iter(runs))}/events", headers=a.auth("auditor"))
    assert r.status_code == 200, r.text
    store = a.ledger.store
    a.ledger.checkpoint(force=True)
    result = verify_log(store.raw_entries(), [c.note for c in store.checkpoints()],
                        [a.ledger.signer.vkey], origin=store.get_meta("origin"))
    assert result.ok, result.reason


def test_a_retried_upload_records_nothing_twice(logged_api: Api, opa_server, tmp_path: Path) -> None:
    """OPA retries an upload whose answer it did not get: the same body again adds nothing."""
    a = logged_api
    port = free_port()
    with serving(a.app, port) as url:
        opa = opa_server(bundle=_bundle(tmp_path), config=_config(tmp_path, url, a.secrets["publisher"]))
        ids = {ask(opa.url, n) for n in (10, 20, 2000)}
        events = wait_for(a, ids)
    body = gzip.compress(json.dumps([
        {"decision_id": e["data"]["decision_id"], "path": "tachograph/decision",
         "timestamp": e["time"], "bundles": {"refunds": {"revision": REVISION}},
         "input": {"tool": "refund"}, "result": {"decision": e["data"]["decision"],
                                                 "reason": e["data"]["reason"]}}
        for e in events]).encode())
    size = a.ledger.store.size()
    r = a.client.post("/v1/opa/logs", content=body, headers={
        **a.auth("publisher"), "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert (r.json()["recorded"], r.json()["duplicates"]) == (0, 3)
    assert a.ledger.store.size() == size
