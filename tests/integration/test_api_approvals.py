"""The approvals API in process: ids that look like paths, roles, 404/409/422, pages, long polls."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.approval_agent import segment
from tests.factories import event
from tests.integration.api_support import Api, close_api, make_api, publish

IDS = ["plain", "a/b", "../victim-run/refund-999", "..", ".", "50% off?#x", "x/decision"]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = make_api(tmp_path, approval_decisions="person")
    yield a
    close_api(a)


def _request(a: Api, run: str, aid: str, **extra: Any) -> None:
    out = publish(a, [event(run, 0), event(run, 1, "approval.requested",
                                           {"approval_id": aid, "summary": f"about {run}", "risk": "high", **extra})])
    assert out["accepted"] == 2, out


def _decide(a: Api, aid: str, decision: str = "approved", role: str = "approver", **body: Any) -> Any:
    return a.client.post(f"/v1/approvals/{segment(aid)}/decision", json={"decision": decision, **body},
                         headers=a.auth(role))


def test_every_approval_id_is_one_encoded_path_segment_whatever_it_holds(api: Api) -> None:
    for n, aid in enumerate(IDS):
        _request(api, f"run-{n}", aid)
    for n, aid in enumerate(IDS):
        got = api.client.get(f"/v1/approvals/{segment(aid)}", headers=api.auth("publisher"))
        assert got.status_code == 200, (aid, got.text)
        assert (got.json()["approval_id"], got.json()["run_id"], got.json()["status"]) == (aid, f"run-{n}", "pending")
    r = _decide(api, "../victim-run/refund-999", reason="fine")
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    statuses = {aid: api.client.get(f"/v1/approvals/{segment(aid)}", headers=api.auth("auditor")).json()["status"]
                for aid in IDS}
    assert statuses == {**dict.fromkeys(IDS, "pending"), "../victim-run/refund-999": "approved"}
    assert _decide(api, "x/decision").json()["approval_id"] == "x/decision"


def test_a_decision_is_a_platform_record_and_the_run_is_not_written_to(api: Api) -> None:
    _request(api, "r1", "ap/1")
    r = _decide(api, "ap/1", "rejected", reason="too risky")
    body = r.json()
    approver = api.keys.list("acme")
    key_id = next(k.id for k in approver if k.role == "approver")
    assert (body["status"], body["decided_by"], body["reason"]) == ("rejected", f"apikey:{key_id}", "too risky")
    assert [e.event_type for e in api.ledger.store.run_entries("acme", "r1")] == ["run.started",
                                                                                  "approval.requested"]
    rec = api.ledger.store.records("acme", record_type="approval.decision")
    assert [r.index for r in rec] == [body["decision_index"]]
    again = _decide(api, "ap/1", "approved")
    assert again.status_code == 409 and "already decided: rejected" in again.json()["message"]
    ok = publish(api, [event("r1", 2, "approval.decided", {"approval_id": "ap/1", "decision": "rejected",
                                                           "by": body["decided_by"], "reason": "too risky"})])
    assert ok["accepted"] == 1, ok


def test_roles_and_workspaces_of_the_approvals_api(api: Api) -> None:
    _request(api, "r1", "ap/1")
    theirs = {"Authorization": f"Bearer {api.key('globex', 'approver')}"}
    assert api.client.get("/v1/approvals/ap%2F1", headers=theirs).status_code == 404
    assert api.client.post("/v1/approvals/ap%2F1/decision", json={"decision": "approved"},
                           headers=theirs).status_code == 404
    for role in ("publisher", "auditor", "admin", "engineer", "analyst"):
        assert _decide(api, "ap/1", role=role).status_code == 403, role
    for role, status in (("approver", 200), ("auditor", 200), ("admin", 200), ("publisher", 403),
                         ("engineer", 403), ("analyst", 403)):
        assert api.client.get("/v1/approvals", headers=api.auth(role)).status_code == status, role
    assert api.client.get("/v1/approvals/ap%2F1", headers=api.auth("engineer")).status_code == 403
    bad = [
        api.client.get("/v1/approvals/ap%2F1?wait=31", headers=api.auth("publisher")),
        api.client.get("/v1/approvals/" + "x" * 513, headers=api.auth("publisher")),
        api.client.post("/v1/approvals/ap%2F1/decision", json={"decision": "maybe"}, headers=api.auth("approver")),
        api.client.post("/v1/approvals/ap%2F1/decision", json={"decision": "approved", "reason": "x" * 2001},
                        headers=api.auth("approver")),
        api.client.get("/v1/approvals?status=open", headers=api.auth("auditor")),
    ]
    assert [r.status_code for r in bad] == [422] * 5
    assert api.ledger.store.approval("acme", "ap/1").decision is None


def test_the_queue_pages_pending_and_decided_approvals_and_its_reads_are_audited(api: Api) -> None:
    for n in range(5):
        _request(api, f"r{n}", f"ap-{n}")
    _decide(api, "ap-1")
    _decide(api, "ap-3", "rejected")
    h = api.auth("approver")
    first = api.client.get("/v1/approvals?limit=2", headers=h).json()
    assert [a["approval_id"] for a in first["approvals"]] == ["ap-0", "ap-2"]
    rest = api.client.get(f"/v1/approvals?limit=2&cursor={first['next_cursor']}", headers=h).json()
    assert [a["approval_id"] for a in rest["approvals"]] == ["ap-4"] and rest["next_cursor"] is None
    decided = api.client.get("/v1/approvals?status=decided", headers=h).json()["approvals"]
    assert [(a["approval_id"], a["status"]) for a in decided] == [("ap-1", "approved"), ("ap-3", "rejected")]
    reads = api.ledger.store.records("acme", record_type="audit.read")
    assert sum(b'"approvals.list"' in r.data for r in reads) == 3


def test_a_long_poll_answers_as_soon_as_a_person_decides_and_otherwise_after_its_wait(api: Api) -> None:
    _request(api, "r1", "slow")
    started = time.monotonic()
    waited = api.client.get("/v1/approvals/slow?wait=0.5", headers=api.auth("publisher"))
    assert waited.json()["status"] == "pending" and 0.45 < time.monotonic() - started < 3
    _request(api, "r2", "fast")
    answer: dict[str, Any] = {}

    def agent() -> None:
        r = api.client.get("/v1/approvals/fast?wait=20", headers=api.auth("publisher"))
        answer.update(r.json(), at=time.monotonic())

    waiter = threading.Thread(target=agent)
    waiter.start()
    time.sleep(0.5)
    decided_at = time.monotonic()
    assert _decide(api, "fast").status_code == 200
    waiter.join(timeout=20)
    assert answer["status"] == "approved" and answer["at"] - decided_at < 1.0


def test_an_approval_with_a_timeout_expires_and_its_wait_ends_then(api: Api) -> None:
    _request(api, "r1", "brief", timeout_s=0.4)
    started = time.monotonic()
    r = api.client.get("/v1/approvals/brief?wait=10", headers=api.auth("publisher"))
    assert r.json()["status"] == "expired" and time.monotonic() - started < 3
    assert r.json()["expires_at"] is not None
    late = _decide(api, "brief")
    assert late.status_code == 409 and "expired" in late.json()["message"]


def test_a_decision_shows_in_the_audit_log_over_the_api_and_on_the_console_page(api: Api) -> None:
    _request(api, "r1", "ap/1")
    decided = _decide(api, "ap/1", reason="checked").json()
    page = api.client.get("/v1/audit-log?type=approval.decision", headers=api.auth("auditor")).json()
    assert [(r["index"], r["record"]["data"]["approval_id"]) for r in page["records"]] == [
        (decided["decision_index"], "ap/1")]
    login = api.client.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    signed = api.client.post("/console/login", data={"api_key": api.secrets["auditor"], "csrf": token},
                             follow_redirects=False)
    assert signed.status_code == 303
    audit = api.client.get("/console/audit")
    assert audit.status_code == 200 and "approval.decision" in audit.text and "checked" in audit.text


def test_a_replay_asks_no_person_and_its_decision_repeats_the_one_made_in_the_run_it_replays(api: Api) -> None:
    _request(api, "r1", "r1/refund")
    person = _decide(api, "r1/refund", reason="checked").json()
    said = {"decision": "approved", "by": person["decided_by"]}
    out = publish(api, [event("r1", 2, "approval.decided", {"approval_id": "r1/refund", **said}),
                        event("r1", 3, "run.completed", {"outcome": "succeeded"})])
    assert out["accepted"] == 2, out
    start = {"workflow": "wf", "mode": "execute", "risk_tier": "low", "replay_of": "r1"}
    replay = [event("rp", 0, "run.started", start),
              event("rp", 1, "approval.requested", {"approval_id": "rp/refund", "summary": "s", "risk": "high"})]
    assert publish(api, replay)["accepted"] == 2
    h = api.auth("approver")
    assert api.client.get("/v1/approvals?status=pending", headers=h).json()["approvals"] == []
    assert api.client.get("/v1/approvals/rp%2Frefund", headers=h).status_code == 404
    assert _decide(api, "rp/refund").status_code == 404  # nobody can decide a replay's request
    board = api.app.state.console.board
    assert board.pending("acme", api.clock()) == [] and board.approval("acme", "rp", "rp/refund") is None

    forged = publish(api, [event("rp", 2, "approval.decided", {"approval_id": "rp/refund", "decision": "approved",
                                                               "by": person["decided_by"]})])
    assert forged["accepted"] == 0 and "names no replayed_from" in forged["results"][0]["reason"], forged
    ok = publish(api, [event("rp", 2, "approval.decided", {"approval_id": "rp/refund", "replayed_from": "r1/refund",
                                                           **said}),
                       event("rp", 3, "run.completed", {"outcome": "succeeded"})])
    assert ok["accepted"] == 2, ok
    decided = api.client.get("/v1/approvals?status=decided", headers=h).json()["approvals"]
    assert [a["approval_id"] for a in decided] == ["r1/refund"]  # the original decision, listed once
