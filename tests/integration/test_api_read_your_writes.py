"""Read-your-writes over HTTP: once ``POST /v1/events`` (or the agent runtime's flush) returns, a
read of that run reflects it, though the run index is projected on a background runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tachograph.builder import RunLog, RunSpec
from tachograph.transports import HttpTransport
from tests.harness import free_port
from tests.integration.api_support import close_api, make_api, serving


def _run(run_id: str, steps: int, completed: bool = True) -> list[tuple[str, bytes]]:
    log = RunLog(RunSpec("acme", run_id, "ryw-check", {"id": "ryw-agent", "version": "1"}))
    out = [log.build("run.started", log.spec.started_data(), "2026-11-20T10:00:00Z")]
    for n in range(steps):
        out.append(log.build("tool.called", {"call_id": f"t-{n}", "tool": "noop", "args": {"n": n},
                                             "status": "ok", "latency_ms": 1, "side_effect": "none"},
                             "2026-11-20T10:00:01Z"))
    if completed:
        out.append(log.build("run.completed", {"outcome": "succeeded"}, "2026-11-20T10:00:02Z"))
    return out


@pytest.fixture
def served(tmp_path: Path) -> Any:
    api = make_api(tmp_path)
    for model in api.services.read_models():
        model.source.idle_s = 60  # an idle runner would not look again in time: reads must wake it
    with serving(api.app, free_port()) as url:
        assert all(m.runner is not None for m in api.services.read_models())  # started by the lifespan
        yield api, url
    close_api(api)


def test_a_run_posted_over_http_is_read_back_at_once_from_the_run_index(served):
    api, url = served
    with httpx.Client(base_url=url, timeout=10) as http:
        for n in range(15):
            run_id = f"ryw-{n}"
            events = _run(run_id, steps=n, completed=n % 2 == 0)
            body = b"[" + b",".join(v for _, v in events) + b"]"
            r = http.post("/v1/events", content=body, headers={**api.auth("publisher"),
                                                               "Content-Type": "application/json"})
            assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text
            timeline = http.get(f"/v1/runs/{run_id}/timeline", headers=api.auth("auditor"))
            assert timeline.status_code == 200, timeline.text
            assert timeline.json()["run"]["events"] == len(events) == len(timeline.json()["steps"])
            assert timeline.json()["run"]["outcome"] == ("succeeded" if n % 2 == 0 else None)
            listed = http.get("/v1/runs", params={"workflow": "ryw-check", "limit": 500},
                              headers=api.auth("auditor"))
            assert listed.json()["runs"][0]["run_id"] == run_id
            assert len(listed.json()["runs"]) == n + 1


def test_a_run_the_agent_runtime_flushed_over_http_is_in_the_runs_list_and_approval_queue(served):
    api, url = served
    transport = HttpTransport(url, api.secrets["publisher"])
    log = RunLog(RunSpec("acme", "ryw-approval", "ryw-check", {"id": "ryw-agent", "version": "1"}))
    events = [log.build("run.started", log.spec.started_data(), "2026-11-20T10:00:00Z"),
              log.build("approval.requested", {"approval_id": "ap-ryw", "summary": "pay it", "risk": "high"},
                        "2026-11-20T10:00:01Z")]
    for event_id, value in events:
        transport.send("ryw-approval", event_id, value)
    transport.flush(10)
    with httpx.Client(base_url=url, timeout=10) as http:
        summary = http.get("/v1/runs/ryw-approval/timeline", headers=api.auth("auditor")).json()["run"]
        assert summary["events"] == 2 and summary["outcome"] is None
    board = api.app.state.console.board
    assert [a.approval_id for a in board.pending("acme", api.clock())] == ["ap-ryw"]
    transport.close(5)


def test_a_read_the_run_index_cannot_reach_in_time_answers_503_saying_how_far_behind(tmp_path):
    api = make_api(tmp_path, read_wait_s=0.3)
    runs = api.services.runs
    process = runs.projection.process_event
    gate = __import__("threading").Event()

    def slow(batch: Any, tracking: Any) -> None:
        gate.wait(10)  # the projection is stuck until the test lets it go
        process(batch, tracking)

    runs.projection.process_event = slow  # type: ignore[method-assign]
    runs.start()
    try:
        events = [v for _, v in _run("ryw-slow", steps=2)]
        r = api.client.post("/v1/events", content=b"[" + b",".join(events) + b"]",
                            headers={**api.auth("publisher"), "Content-Type": "application/json"})
        assert r.status_code == 200
        late = api.client.get("/v1/runs", headers=api.auth("auditor"))
        assert late.status_code == 503 and late.headers["Retry-After"] == "1"
        assert late.json()["error"] == "ProjectionLagError" and "entries behind" in late.json()["message"]
        gate.set()
        ok = api.client.get("/v1/runs", headers=api.auth("auditor"))
        assert ok.status_code == 200 and [x["run_id"] for x in ok.json()["runs"]] == ["ryw-slow"]
    finally:
        gate.set()
        runs.stop()
        close_api(api)
