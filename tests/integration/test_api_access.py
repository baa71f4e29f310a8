"""Access control: every endpoint × every role, no key, expired and revoked keys, other workspaces."""

from __future__ import annotations

import pytest

from api.auth import Capability, api_may
from api.keys_store import ROLES
from tachograph.contract.canonical import dumps
from tests.factories import event
from tests.integration.api_support import Api, api, publish, workload

__all__ = ["api"]

RUN = "ticket-triage-0000"

# (method, path, capability, body)
ENDPOINTS: list[tuple[str, str, Capability, bytes | None]] = [
    ("POST", "/v1/events", Capability.INGEST, b"[]"),
    ("POST", "/v1/traces", Capability.INGEST, b"{}"),
    ("GET", "/v1/runs", Capability.READ_HISTORY, None),
    ("GET", "/v1/runs/{run}", Capability.READ_HISTORY, None),
    ("GET", "/v1/runs/{run}/timeline", Capability.READ_HISTORY, None),
    ("GET", "/v1/runs/{run}/events", Capability.READ_HISTORY, None),
    ("GET", "/v1/runs/{run}/evidence", Capability.EVIDENCE, None),
    ("GET", "/v1/quarantine", Capability.QUARANTINE, None),
    ("GET", "/v1/log/checkpoint", Capability.READ_LOG, None),
    ("GET", "/v1/log/proof/inclusion?index=0&size=1", Capability.READ_LOG, None),
    ("GET", "/v1/log/proof/consistency?first=1&second=2", Capability.READ_LOG, None),
    ("GET", "/v1/log/verification", Capability.READ_LOG, None),
    ("GET", "/v1/analytics/cost-per-outcome", Capability.ANALYTICS, None),
    ("GET", "/v1/export/events.parquet", Capability.EXPORT, None),
    ("POST", "/v1/replays", Capability.REPLAY,
     b'{"agent": "examples.triage:triage", "runs": ["{run}"]}'),
    ("GET", "/v1/replays", Capability.REPLAY, None),
    ("GET", "/v1/replays/{replay}", Capability.REPLAY, None),
    ("GET", "/v1/keys", Capability.KEYS, None),
    ("GET", "/v1/halts", Capability.READ_HALTS, None),
    ("PUT", "/v1/halts/workflow/access-check", Capability.HALT, b'{"reason": "access check"}'),
    ("DELETE", "/v1/halts/workflow/access-check", Capability.HALT, None),
    ("GET", "/v1/webhooks", Capability.WEBHOOK_STATUS, None),
    ("POST", "/v1/webhooks", Capability.KEYS, b'{"url": "https://hooks.example.com/tacho"}'),
    ("GET", "/v1/approvals", Capability.APPROVAL_QUEUE, None),
    ("GET", "/v1/approvals/ap%2F1", Capability.APPROVAL_STATUS, None),
    ("GET", "/v1/approvals/ap%2F1?wait=0.1", Capability.APPROVAL_STATUS, None),
    ("POST", "/v1/approvals/ap%2F1/decision", Capability.APPROVE, b'{"decision": "approved"}'),
]


@pytest.fixture
def seeded(api: Api) -> tuple[Api, str]:
    events = workload(runs=3)
    publish(api, events)
    publish(api, [event("waits-1", 0, workspace="acme"),
                  event("waits-1", 1, "approval.requested", {"approval_id": "ap/1", "summary": "s", "risk": "low"},
                        workspace="acme")])
    api.ledger.checkpoint(force=True)
    return api, events[0]["run_id"]


def _replay_of(a: Api, run: str) -> str:
    """The id of a replay of ``run`` started by the workspace's engineer."""
    r = a.client.post("/v1/replays", json={"agent": "examples.triage:triage", "runs": [run]},
                      headers=a.auth("engineer"))
    assert r.status_code == 202, r.text
    return str(r.json()["replay_id"])


def _fill(text: str, run: str, replay: str) -> str:
    return text.replace("{run}", run).replace("{replay}", replay)


def _call(a: Api, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
    headers = {**headers, "Content-Type": "application/json"}
    return a.client.request(method, path, content=body, headers=headers).status_code


def test_every_endpoint_answers_each_role_by_its_grants(seeded: tuple[Api, str]) -> None:
    a, run = seeded
    replay = _replay_of(a, run)
    table = {}
    for method, path, cap, body in ENDPOINTS:
        url = _fill(path, run, replay)
        content = _fill(body.decode(), run, replay).encode() if body else None
        for role in ROLES:
            status = _call(a, method, url, content, a.auth(role))
            table[(url, role)] = status
            if api_may(role, cap):
                # granted: never refused; analytics/export answer 503 until `tacho project` ran;
                # a halt set by one role is already set (200) or cleared (404) for the next
                assert status in (200, 201, 202, 404, 503) and (status != 404 or method == "DELETE"), (
                    url, role, status)
            else:
                assert status == 403, (url, role, status)
    assert table[("/v1/runs", "auditor")] == 200
    assert table[("/v1/replays", "engineer")] == 200
    assert table[("/v1/replays", "admin")] == 200  # as docs/api.md and the OpenAPI say (issue 13)
    assert table[("/v1/runs", "approver")] == 403  # approver: console only (issue 13)
    assert table[("/v1/halts", "approver")] == table[("/v1/halts", "publisher")] == 200  # but halts (14)
    assert table[("/v1/approvals", "approver")] == 200  # ...but for the approvals API (issue 14)
    assert table[("/v1/approvals/ap%2F1", "publisher")] == 200  # agents wait on their approvals
    assert table[("/v1/replays", "auditor")] == 403


def test_missing_malformed_expired_and_revoked_keys_get_401_everywhere(seeded: tuple[Api, str]) -> None:
    a, run = seeded
    replay = _replay_of(a, run)
    expiring = a.key("acme", "admin", expires=a.clock() + 60)
    revoked_secret = a.key("acme", "admin")
    revoked_id = revoked_secret.split("_")[1]
    a.keys.revoke(revoked_id)
    a.clock.advance(61)
    headers = {
        "none": {},
        "malformed": {"Authorization": "Bearer nope"},
        "unknown": {"Authorization": "Bearer tacho_000000000000_" + "A" * 43},
        "expired": {"Authorization": f"Bearer {expiring}"},
        "revoked": {"Authorization": f"Bearer {revoked_secret}"},
    }
    for method, path, _cap, body in ENDPOINTS:
        for name, h in headers.items():
            r = a.client.request(method, _fill(path, run, replay), content=body, headers=h)
            assert r.status_code == 401, (path, name, r.status_code)
            assert r.json()["error"] == "AuthError"
    r = a.client.get("/v1/keys", headers=headers["expired"])
    assert "expired" in r.json()["message"]


def test_another_workspaces_run_is_indistinguishable_from_a_missing_one(seeded: tuple[Api, str]) -> None:
    a, run = seeded
    other = {"Authorization": f"Bearer {a.key('globex', 'auditor')}"}
    for suffix in ("", "/timeline", "/events", "/evidence"):
        theirs = a.client.get(f"/v1/runs/{run}{suffix}", headers=other)
        missing = a.client.get(f"/v1/runs/no-such-run{suffix}", headers=other)
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["message"].replace(run, "X") == missing.json()["message"].replace(
            "no-such-run", "X")
    listed = a.client.get("/v1/runs", headers=other).json()
    assert [r for r in listed["runs"] if r["workflow"] != "tachograph.audit"] == []
    q = a.client.get("/v1/quarantine", headers=other).json()
    assert q["items"] == []


def test_a_publisher_cannot_write_into_another_workspace(seeded: tuple[Api, str]) -> None:
    a, _run = seeded
    ev = workload(runs=1, workspaces=("globex",))[0]
    r = a.client.post("/v1/events", content=dumps([ev]), headers={**a.auth("publisher"),
                      "Content-Type": "application/json"})
    assert r.json()["rejected"] == 1
    assert a.ledger.store.run_entries("globex", ev["run_id"]) == []


def test_an_admin_manages_keys_of_its_own_workspace_only(seeded: tuple[Api, str]) -> None:
    a, _run = seeded
    h = a.auth("admin")
    created = a.client.post("/v1/keys", json={"role": "auditor", "expires": "1d"}, headers=h)
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert a.client.get("/v1/runs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    kid = created.json()["key"]["id"]
    assert a.client.delete(f"/v1/keys/{kid}", headers=h).json()["revoked"]
    assert a.client.get("/v1/runs", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    foreign = a.keys.create("globex", "auditor")[0].id
    assert a.client.delete(f"/v1/keys/{foreign}", headers=h).status_code == 404
    assert all(k["workspace"] == "acme" for k in a.client.get("/v1/keys", headers=h).json())
    bad = a.client.post("/v1/keys", json={"role": "superuser"}, headers=h)
    assert bad.status_code == 422 and "role" in bad.json()["message"]


def test_an_approver_key_reads_no_history_over_the_api_and_is_told_the_console_is_its_place(
        seeded: tuple[Api, str]) -> None:
    a, run = seeded
    for path in ("/v1/runs", f"/v1/runs/{run}/timeline", f"/v1/runs/{run}/events"):
        r = a.client.get(path, headers=a.auth("approver"))
        assert r.status_code == 403 and "console only" in r.json()["message"], (path, r.text)
    assert a.client.get("/v1/runs", headers=a.auth("engineer")).status_code == 200


def test_an_admin_key_starts_lists_and_reads_replays_as_the_docs_say(seeded: tuple[Api, str]) -> None:
    a, run = seeded
    r = a.client.post("/v1/replays", json={"agent": "examples.triage:triage", "runs": [run]},
                      headers=a.auth("admin"))
    assert r.status_code == 202, r.text
    rid = r.json()["replay_id"]
    assert a.client.get(f"/v1/replays/{rid}", headers=a.auth("admin")).status_code == 200
    listed = a.client.get("/v1/replays", headers=a.auth("admin")).json()["replays"]
    assert rid in [x["replay_id"] for x in listed]


def test_every_response_carries_nosniff_no_referrer_and_no_framing(api: Api) -> None:
    big = b"[" + b" " * (api.services.limits.max_body_bytes + 1) + b"]"
    answers = [
        api.client.get("/healthz"), api.client.get("/v1/runs"), api.client.get("/openapi.json"),
        api.client.get("/docs"), api.client.get("/console/login"), api.client.get("/nowhere"),
        api.client.get("/v1/runs", headers=api.auth("auditor")),
        api.client.post("/v1/events", content=big, headers={**api.auth("publisher"),
                                                           "Content-Type": "application/json"}),
    ]
    assert [r.status_code for r in answers] == [200, 401, 200, 200, 200, 404, 200, 413]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["referrer-policy"] == "no-referrer", r.url
        assert r.headers["x-frame-options"] == "DENY", r.url
    assert "frame-ancestors 'none'" in answers[4].headers["content-security-policy"]
