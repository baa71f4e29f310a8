"""Replays over HTTP: start, status, report, list; allow-listed agents only; workspace-scoped."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from domain.approvals import ApprovalRow
from ingest.embedded import StandInApprover, Verdict, embedded_runtime
from replay.store import ReplayReports
from tachograph.builder import seq_event_id
from tachograph.contract.canonical import loads
from tests.integration.api_support import Api, audit_reads, close_api, make_api

TRIAGE = "examples.triage:triage"


def _approve(row: ApprovalRow) -> Verdict:
    return "approved", None


def record(a: Api, workspace: str, n: int, prefix: str = "t") -> list[str]:
    """Run the triage example live ``n`` times in a workspace through the agent runtime (a
    stand-in person approves through the platform); the recorded run ids."""
    module = __import__("examples.triage", fromlist=["inputs"])
    run_ids = [f"{prefix}-{workspace}-{i:03d}" for i in range(n)]
    with StandInApprover(a.ledger, workspace, "ops@test", _approve), \
            embedded_runtime(a.ledger, workspace, event_ids=seq_event_id, model="sim-small-v1",
                             approval_timeout_s=10) as rt:
        for run_id, inp in zip(run_ids, module.inputs(n, salt=prefix), strict=True):
            rt.run(TRIAGE, inp, run_id=run_id)
    return run_ids


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Api, list[str], list[str]]]:
    a = make_api(tmp_path)
    ours = record(a, "acme", 6)
    theirs = record(a, "globex", 3)
    yield a, ours, theirs
    close_api(a)


def start(a: Api, body: dict[str, Any], role: str = "engineer") -> Any:
    return a.client.post("/v1/replays", json=body, headers=a.auth(role))


def finished(a: Api, replay_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Poll a replay until it is no longer queued or running; its body (numbers exact)."""
    deadline = time.monotonic() + 60
    while True:
        r = a.client.get(f"/v1/replays/{replay_id}", headers=headers or a.auth("engineer"))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = loads(r.content)
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_a_fidelity_replay_started_over_http_reproduces_the_workspaces_runs(
    recorded: tuple[Api, list[str], list[str]],
) -> None:
    a, ours, _theirs = recorded
    r = start(a, {"agent": TRIAGE, "workflow": "ticket-triage", "max_outcome_change": "0"})
    assert r.status_code == 202, r.text
    rid = r.json()["replay_id"]
    assert r.headers["location"] == f"/v1/replays/{rid}"
    assert r.json()["status"] in ("queued", "running", "finished")
    body = finished(a, rid)
    assert body["status"] == "finished", body["error"]
    report = body["report"]
    assert sorted(run["run_id"] for run in report["runs"]) == ours  # never globex's runs
    assert {run["status"] for run in report["runs"]} == {"reproduced"}
    assert body["passed"] is True and report["gate"]["passed"] is True
    assert body["progress"] == {"done": len(ours), "total": len(ours)}
    # money is exact: the report's recorded cost is the sum of the recorded model calls
    cost = sum((Decimal(str(loads(row.data)["event"]["data"]["cost_usd"]))
                for run in ours for row in a.ledger.store.run_entries("acme", run)
                if row.event_type == "model.called"), Decimal(0))
    assert Decimal(str(report["summary"]["before"]["cost_usd"])) == cost
    # the replayed runs are in the ledger, and the report is where `tacho replay show` reads it
    for run in report["runs"]:
        rows = a.ledger.store.run_entries("acme", run["replay_run_id"])
        assert loads(rows[0].data)["event"]["data"]["replay_of"] == run["run_id"]
    assert ReplayReports(a.data_dir / "replays").load(rid)["replay_id"] == rid


def test_a_what_if_replay_reports_its_gate_against_the_thresholds_given(
    recorded: tuple[Api, list[str], list[str]],
) -> None:
    a, ours, _ = recorded
    r = start(a, {"agent": TRIAGE, "runs": ours[:4], "model": "sim-large-v2",
                  "max_outcome_change": 0, "max_cost_increase": "0.5"})
    assert r.status_code == 202, r.text
    body = finished(a, r.json()["replay_id"])
    assert body["status"] == "finished", body["error"]
    summary = body["report"]["summary"]
    assert body["mode"] == "what-if" and body["candidate"] == "model=sim-large-v2"
    assert summary["runs"] == 4
    within = Decimal(str(summary["outcome_change_rate"])) <= 0 and (
        summary["cost_increase"] is None or Decimal(str(summary["cost_increase"])) <= Decimal("0.5"))
    assert body["passed"] is within
    assert (body["report"]["gate"]["failures"] == []) is within


def test_only_allow_listed_agents_are_loaded_and_nothing_else_is_imported(
    recorded: tuple[Api, list[str], list[str]],
) -> None:
    a, ours, _ = recorded
    before = set(sys.modules)
    for ref in ("os:system", "tests.integration.never_imported:run", "examples.triage:inputs"):
        r = start(a, {"agent": ref, "runs": ours[:1]})
        assert r.status_code == 422, r.text
        assert "allow-list" in r.json()["message"] and TRIAGE in r.json()["message"]
    assert "tests.integration.never_imported" not in sys.modules
    assert set(sys.modules) - before == set()
    assert a.client.get("/v1/replays", headers=a.auth("engineer")).json()["replays"] == []


def test_bad_replay_requests_are_refused_with_the_problem_named(
    recorded: tuple[Api, list[str], list[str]],
) -> None:
    a, ours, theirs = recorded
    cases = [
        ({"agent": TRIAGE, "runs": ours[:1], "model": "gpt-nonexistent"}, 422, "gpt-nonexistent"),
        ({"agent": TRIAGE, "runs": ours[:1], "prompts": {"no.such": "x"}}, 422, "no.such"),
        ({"agent": TRIAGE, "runs": [theirs[0]]}, 404, theirs[0]),
        ({"agent": TRIAGE, "runs": ["no-such-run"]}, 404, "no-such-run"),
        ({"agent": TRIAGE, "runs": ours[:1], "max_outcome_change": "-1"}, 422, "max_outcome_change"),
        ({"agent": TRIAGE, "runs": ours[:1], "colour": "red"}, 422, "colour"),
    ]
    for body, status, named in cases:
        r = start(a, body)
        assert r.status_code == status, (body, r.text)
        assert named in r.json()["message"], (body, r.json())
    assert a.client.get("/v1/replays", headers=a.auth("engineer")).json()["replays"] == []


def test_a_replay_matching_no_runs_fails_visibly(recorded: tuple[Api, list[str], list[str]]) -> None:
    a, _, _ = recorded
    r = start(a, {"agent": TRIAGE, "workflow": "ticket-triage", "since": "2999-01-01"})
    assert r.status_code == 202
    body = finished(a, r.json()["replay_id"])
    assert body["status"] == "failed" and "no finished runs" in body["error"]
    assert body["report"] is None


def test_another_workspaces_replay_is_indistinguishable_from_a_missing_one(
    recorded: tuple[Api, list[str], list[str]],
) -> None:
    a, ours, _ = recorded
    rid = start(a, {"agent": TRIAGE, "runs": ours[:2]}).json()["replay_id"]
    assert finished(a, rid)["status"] == "finished"
    other = {"Authorization": f"Bearer {a.key('globex', 'engineer')}"}
    theirs = a.client.get(f"/v1/replays/{rid}", headers=other)
    missing = a.client.get("/v1/replays/rp-missing", headers=other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["message"].replace(rid, "X") == missing.json()["message"].replace("rp-missing", "X")
    assert a.client.get("/v1/replays", headers=other).json()["replays"] == []
    listed = a.client.get("/v1/replays", headers=a.auth("engineer")).json()["replays"]
    assert [(x["replay_id"], x["status"]) for x in listed] == [(rid, "finished")]


def test_a_finished_replay_is_still_listed_and_readable_after_a_restart(
    recorded: tuple[Api, list[str], list[str]], tmp_path: Path,
) -> None:
    a, ours, _ = recorded
    rid = start(a, {"agent": TRIAGE, "runs": ours[:2]}).json()["replay_id"]
    first = finished(a, rid)
    a.services.replays.jobs.clear()  # what a restart forgets
    again = finished(a, rid)
    assert again["report"] == first["report"]
    assert (again["status"], again["passed"]) == ("finished", first["passed"])
    assert [x["replay_id"] for x in a.client.get("/v1/replays", headers=a.auth("engineer")).json()["replays"]] == [rid]


def test_every_replay_read_and_start_is_recorded_in_the_ledger(
    recorded: tuple[Api, list[str], list[str]],
) -> None:
    a, ours, _ = recorded
    rid = start(a, {"agent": TRIAGE, "runs": ours[:1]}).json()["replay_id"]
    finished(a, rid)
    a.client.get("/v1/replays", headers=a.auth("engineer"))
    reads = [e["data"] for e in audit_reads(a)]
    actions = [r["action"] for r in reads]
    assert actions[0] == "replay.start" and "replay.report" in actions and actions[-1] == "replays.list"
    assert all(r["target"].get("replay_id") == rid for r in reads if r["action"].startswith("replay."))


def test_too_many_queued_replays_get_503_and_nothing_is_lost(tmp_path: Path) -> None:
    a = make_api(tmp_path, replay_queue=1)
    try:
        ours = record(a, "acme", 4)
        busy = threading.Event()
        pool = ThreadPoolExecutor(max_workers=1)
        pool.submit(busy.wait, 30)  # the worker is busy, so the first replay stays queued
        a.services.replays._pool = pool
        first = start(a, {"agent": TRIAGE, "runs": ours})
        second = start(a, {"agent": TRIAGE, "runs": ours[:1]})
        assert first.status_code == 202 and first.json()["status"] == "queued"
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert "limit 1" in second.json()["message"]
        busy.set()
        body = finished(a, first.json()["replay_id"])
        assert body["status"] == "finished" and len(body["report"]["runs"]) == len(ours)
    finally:
        close_api(a)


def test_a_step_replay_started_over_http_needs_no_agent_and_is_stored(
    recorded: tuple[Api, list[str], list[str]],
) -> None:
    a, ours, _theirs = recorded
    r = start(a, {"mode": "steps", "model": "sim-large-v2", "workflow": "ticket-triage",
                  "max_response_change": "1"})
    assert r.status_code == 202, r.text
    body = finished(a, r.json()["replay_id"])
    assert body["status"] == "finished" and body["mode"] == "steps" and body["agent"] is None, body
    report = body["report"]
    assert sorted(run["run_id"] for run in report["runs"]) == ours  # this workspace's runs only
    s = report["summary"]
    assert s["replayed_calls"] == s["model_calls"] > 0 and s["response_change_rate"] is not None
    assert report["gate"]["passed"]
    assert ReplayReports(a.data_dir / "replays").load(report["replay_id"])["mode"] == "steps"


def test_a_step_replay_refuses_what_it_cannot_use_or_judge(recorded: tuple[Api, list[str], list[str]]) -> None:
    a, ours, _ = recorded
    cases = [
        ({"mode": "steps", "workflow": "ticket-triage"}, "model"),
        ({"mode": "steps", "model": "sim-large-v2", "runs": ours[:1], "agent": TRIAGE}, "agent"),
        ({"mode": "steps", "model": "sim-large-v2", "runs": ours[:1], "max_outcome_change": "0"},
         "max_outcome_change"),
        ({"agent": TRIAGE, "runs": ours[:1], "max_response_change": "0"}, "max_response_change"),
        ({"workflow": "ticket-triage"}, "agent"),
    ]
    for req, named in cases:
        r = start(a, req)
        assert r.status_code == 422, (req, r.text)
        assert named in r.json()["message"], (req, r.json())
