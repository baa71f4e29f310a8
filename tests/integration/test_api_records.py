"""Platform records: audited reads are out of a publisher's reach, and auditors read them back."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from domain.verify import verify_log
from tests.factories import event
from tests.integration.api_support import Api, api, audit_reads, publish, workload

__all__ = ["api"]


def _today_audit_run(a: Api) -> str:
    return "audit-" + datetime.fromtimestamp(a.clock(), tz=UTC).strftime("%Y-%m-%d")


def _forged_audit_run(run: str) -> list[dict]:
    """What a publisher could post into the old per-day audit run: a fake read, then completion."""
    started = event(run, 0, "run.started", {"workflow": "tachograph.audit", "mode": "execute",
                                            "risk_tier": "low"})
    forged = event(run, 1, "tool.called", {
        "call_id": "read-1", "tool": "tachograph.api.read", "side_effect": "read", "status": "ok",
        "latency_ms": 0, "args": {"action": "run.evidence", "key_id": "someone", "role": "auditor",
                                  "target": {"run_id": "victim"}}})
    forged["agent"] = {"id": "apikey:someone", "version": "auditor"}
    done = event(run, 2, "run.completed", {"outcome": "succeeded"})
    return [started, forged, done]


def test_a_publisher_completing_todays_audit_run_blocks_neither_reads_nor_console_sign_in(api: Api) -> None:
    publish(api, workload(runs=2))
    body = publish(api, _forged_audit_run(_today_audit_run(api)))
    assert body["accepted"] == 3  # an ordinary run to the ledger: it no longer matters
    h = api.auth("auditor")
    assert api.client.get("/v1/runs", headers=h).status_code == 200
    assert api.client.get("/v1/quarantine", headers=h).status_code == 200
    login = api.client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    signed = api.client.post("/console/login", data={"api_key": api.secrets["auditor"], "csrf": csrf,
                                                     "next": "/console/runs"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/console/runs"
    assert [r["data"]["action"] for r in audit_reads(api)] == ["runs.list", "quarantine.list"]
    assert [r["data"]["action"] for r in audit_reads(api, rtype="console.action")] == ["console.sign_in"]


def test_a_forged_read_event_is_not_an_audit_record_and_the_audit_log_pages_real_ones(api: Api) -> None:
    publish(api, _forged_audit_run("audit-2099-01-01"))
    h = api.auth("auditor")
    for _ in range(3):
        assert api.client.get("/v1/runs", headers=h).status_code == 200
    page = api.client.get("/v1/audit-log", params={"limit": 2}, headers=h).json()
    assert [r["record"]["data"]["action"] for r in page["records"]] == ["runs.list", "runs.list"]
    rest = api.client.get("/v1/audit-log", params={"after": page["next_after"]}, headers=h).json()
    # the third runs.list, then the first page's own read; this page's read comes after it
    assert [r["record"]["data"]["action"] for r in rest["records"]] == ["runs.list", "audit_log.list"]
    assert rest["next_after"] is None
    every = page["records"] + rest["records"]
    assert all(r["record"]["type"] == "audit.read" for r in every)
    assert all(r["record"]["record_id"] == f"record/{r['index']}" for r in every)
    assert not any(r["record"]["actor"]["key_id"] == "someone" for r in every)
    assert api.client.get("/v1/audit-log", headers=api.auth("publisher")).status_code == 403
    assert api.client.get("/v1/audit-log", params={"type": "tool.called"}, headers=h).status_code == 422
    actions = api.client.get("/v1/audit-log", params={"type": "console.action"}, headers=h).json()
    assert actions == {"records": [], "next_after": None}
    other = api.key("beta", "auditor")
    beta = api.client.get("/v1/audit-log", headers={"Authorization": f"Bearer {other}"}).json()
    assert beta["records"] == []  # another workspace's records are not shown


def test_records_verify_and_the_legacy_audit_runs_still_verify_and_list(api: Api) -> None:
    publish(api, _forged_audit_run("audit-2026-01-01"))  # what old ledgers hold
    h = api.auth("auditor")
    api.client.get("/v1/runs", headers=h)
    api.ledger.checkpoint(force=True)
    store = api.ledger.store
    result = verify_log(store.raw_entries(), [c.note for c in store.checkpoints()],
                        [api.ledger.signer.vkey], origin=store.get_meta("origin"))
    assert result.ok, result.reason
    legacy = api.client.get("/v1/runs", params={"workflow": "tachograph.audit"}, headers=h).json()
    assert [r["run_id"] for r in legacy["runs"]] == ["audit-2026-01-01"]
