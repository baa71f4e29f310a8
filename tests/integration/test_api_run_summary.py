"""``GET /v1/runs/{run_id}``: one run's summary, exactly as the runs list shows it."""

from __future__ import annotations

from urllib.parse import quote

from tests.factories import event
from tests.integration.api_support import Api, api, audit_reads, publish, workload

__all__ = ["api"]


def _listed(api: Api) -> dict[str, dict]:
    runs = api.client.get("/v1/runs", params={"limit": 500}, headers=api.auth("auditor")).json()["runs"]
    return {r["run_id"]: r for r in runs}


def test_each_runs_summary_is_what_the_runs_list_shows_for_it(api: Api) -> None:
    odd = "job:2026.11-07_a"  # every character a run id may hold but letters and digits
    publish(api, [*workload(runs=8), event(odd, 0), event("still-running", 0),
                  event(odd, 1, "run.completed", {"outcome": "succeeded"})])
    listed = _listed(api)
    assert {odd, "still-running"} <= set(listed) and len(listed) >= 10
    for run_id, row in listed.items():
        r = api.client.get(f"/v1/runs/{quote(run_id, safe='')}", headers=api.auth("auditor"))
        assert r.status_code == 200 and r.json() == row, run_id
    encoded = "/v1/runs/" + "".join(f"%{b:02X}" for b in odd.encode())  # every byte percent-encoded
    r = api.client.get(encoded, headers=api.auth("engineer"))
    assert r.status_code == 200 and r.json()["outcome"] == "succeeded" and r.json()["events"] == 2
    assert api.client.get("/v1/runs/still-running", headers=api.auth("engineer")).json()["outcome"] is None


def test_an_unknown_or_malformed_run_id_and_the_wrong_roles_are_refused(api: Api) -> None:
    events = workload(runs=1)
    publish(api, events)
    run = events[0]["run_id"]
    missing = api.client.get("/v1/runs/no-such-run", headers=api.auth("auditor"))
    assert missing.status_code == 404 and missing.json()["message"] == "no run 'no-such-run'"
    assert api.client.get("/v1/runs/a%20b", headers=api.auth("auditor")).status_code == 422
    assert api.client.get("/v1/runs/" + "r" * 129, headers=api.auth("auditor")).status_code == 422
    assert api.client.get("/v1/runs/a%2Fb", headers=api.auth("auditor")).status_code == 404  # no run id has a /
    assert api.client.get("/v1/runs/%2E%2E", headers=api.auth("auditor")).json()["message"] == "no run '..'"
    for role, status in (("engineer", 200), ("analyst", 403), ("publisher", 403), ("approver", 403)):
        assert api.client.get(f"/v1/runs/{run}", headers=api.auth(role)).status_code == status, role
    assert api.client.get(f"/v1/runs/{run}").status_code == 401


def test_reading_a_summary_is_audited_and_a_failed_read_is_not(api: Api) -> None:
    events = workload(runs=2)
    publish(api, events)
    run = events[0]["run_id"]
    assert api.client.get(f"/v1/runs/{run}", headers=api.auth("engineer")).status_code == 200
    assert api.client.get("/v1/runs/nope", headers=api.auth("engineer")).status_code == 404
    reads = audit_reads(api)
    assert [(r["data"]["action"], r["data"]["target"]) for r in reads] == [
        ("run.summary", {"workspace": "acme", "run_id": run})]
    assert reads[0]["data"]["path"] == f"/v1/runs/{run}"
