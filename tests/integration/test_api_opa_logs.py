"""POST /v1/opa/logs without OPA: limits, bad bodies, result shapes, workspaces, idempotence."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.verify import verify_log
from tachograph.contract.canonical import loads
from tests.integration.api_support import Api, close_api, make_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """An API over a fresh data dir."""
    a = make_api(tmp_path)
    yield a
    close_api(a)


GZ = {"Content-Encoding": "gzip", "Content-Type": "application/json"}


def decision(did: str, result: Any = None, path: str = "http/authz/allow", **kw: Any) -> dict[str, Any]:
    """One decision log event as OPA writes it (no ``result`` key: undefined)."""
    event = {"decision_id": did, "path": path, "timestamp": "2026-03-02T10:00:00.123456789Z",
             "labels": {"id": "opa-1", "version": "1.22.4"}, "input": {"action": "read"},
             "bundles": {"authz": {"revision": "r7"}}, **kw}
    if result is not None:
        event["result"] = result
    return event


def upload(a: Api, events: Any, role: str = "publisher", raw: bytes | None = None,
           headers: dict[str, str] | None = None) -> Any:
    """POST decision events (gzip JSON, as OPA sends them) or ``raw`` bytes; the response."""
    body = raw if raw is not None else gzip.compress(json.dumps(events).encode())
    return a.client.post("/v1/opa/logs", content=body, headers={**a.auth(role), **(headers or GZ)})


def stored(a: Api, run_id: str) -> list[dict[str, Any]]:
    """The decoded entries of one run of workspace ``acme``."""
    return [loads(r.data) for r in a.ledger.store.run_entries("acme", run_id)]


def test_result_shapes_become_decisions_with_revision_and_id(api: Api) -> None:
    r = upload(api, [
        decision("d-1", True), decision("d-2", False), decision("d-3"),
        decision("d-4", {"decision": "require_approval", "reason": "big"}),
        decision("d-5", {"allow": False, "why": "x"}), decision("d-6", [1, 2]),
    ])
    assert r.status_code == 200, r.text
    assert (r.json()["recorded"], r.json()["runs"]) == (6, ["opa.http.authz.allow.2026-03-02"])
    entries = stored(api, "opa.http.authz.allow.2026-03-02")
    assert [e["event"]["type"] for e in entries] == ["run.started"] + ["policy.evaluated"] * 6
    assert {e["source"]["kind"] for e in entries} == {"opa"}
    got = {e["event"]["data"]["decision_id"]: e["event"]["data"] for e in entries[1:]}
    assert [got[f"d-{n}"]["decision"] for n in range(1, 7)] == [
        "allow", "deny", "deny", "require_approval", "deny", "allow"]
    assert got["d-3"]["reason"].startswith("undefined")
    assert got["d-6"]["reason"] == "result (not a decision): [1,2]"
    assert {d["revision"] for d in got.values()} == {"r7"}
    assert {d["action"] for d in got.values()} == {"read"}
    assert entries[1]["event"]["time"] == "2026-03-02T10:00:00.123456Z"


def test_retries_are_idempotent_and_later_uploads_continue_the_run(api: Api) -> None:
    assert upload(api, [decision("a", True), decision("b", True)]).json()["recorded"] == 2
    again = upload(api, [decision("a", True), decision("b", True), decision("c", False)]).json()
    assert (again["recorded"], again["duplicates"]) == (1, 2)
    entries = stored(api, "opa.http.authz.allow.2026-03-02")
    assert [e["event"]["seq"] for e in entries] == [0, 1, 2, 3]
    api.ledger.checkpoint(force=True)
    store = api.ledger.store
    result = verify_log(store.raw_entries(), [c.note for c in store.checkpoints()],
                        [api.ledger.signer.vkey], origin=store.get_meta("origin"))
    assert result.ok, result.reason


def test_each_key_writes_its_own_workspace(api: Api) -> None:
    other = api.key("globex", "publisher")
    r = api.client.post("/v1/opa/logs", content=gzip.compress(json.dumps([decision("g", True)]).encode()),
                        headers={"Authorization": f"Bearer {other}", **GZ})
    assert r.status_code == 200, r.text
    assert api.ledger.store.run_entries("acme", "opa.http.authz.allow.2026-03-02") == []
    assert len(api.ledger.store.run_entries("globex", "opa.http.authz.allow.2026-03-02")) == 2


def test_unreadable_decisions_are_listed_and_the_rest_land(api: Api) -> None:
    r = upload(api, [decision("ok", True), {"path": "x"}, "nope",
                     decision("bad-time", True, timestamp="yesterday")])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recorded"] == 1
    reasons = {x["item"]: x["reason"] for x in body["rejected"]}
    assert "decision_id" in reasons[1] and "JSON object" in reasons[2] and "timestamp" in reasons[3]


def test_bad_bodies_get_clear_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from api.deps import Limits

    a = make_api(tmp_path, limits=Limits(max_body_bytes=100_000, max_batch=5))
    assert upload(a, None, raw=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    r = upload(a, {"decision_id": "x"})
    assert r.status_code == 400 and "JSON array" in r.json()["message"]
    r = upload(a, None, raw=gzip.compress(b"[" + b" " * 5_000_000 + b"]"))
    assert r.status_code == 413 and "decompressed" in r.json()["message"]
    r = upload(a, None, raw=b"\x1f\x8b garbage")
    assert r.status_code == 400
    r = upload(a, [decision(str(n), True) for n in range(6)])
    assert r.status_code == 413 and "6 decisions" in r.json()["message"]
    r = upload(a, [], headers={"Content-Type": "text/csv"})
    assert r.status_code == 415
    assert upload(a, [decision("x", True)], role="auditor").status_code == 403
    assert a.client.post("/v1/opa/logs", content=b"[]").status_code == 401
    assert a.ledger.store.run_entries("acme", "opa.http.authz.allow.2026-03-02") == []
    a.services.replays.close()
    a.client.close()
    a.ledger.store.close()
