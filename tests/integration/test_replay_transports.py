"""A run recorded through the agent runtime replays whichever transport recorded it: runs posted
over HTTP to the platform under uvicorn and runs recorded in process (embedded) replay side by
side with the same code and reproduce. (Kafka-recorded runs reach the same ledger through the
ingest worker: tests/e2e/test_runtime_across_processes.py records them.)"""

from __future__ import annotations

import tachograph
from ingest.embedded import embedded_runtime
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from replay.selection import recorded_entry_point, select_runs
from tachograph.agents import agent_spec, load_agent
from tachograph.models import ModelRegistry
from tests.harness import free_port
from tests.integration.api_support import make_api, serving
from tests.integration.replay_agents import WORKFLOW, lookup


def test_runs_recorded_over_http_and_embedded_replay_together(tmp_path) -> None:
    a = make_api(tmp_path)
    spec = agent_spec(lookup)
    assert spec.ref == "tests.integration.replay_agents:lookup"
    with serving(a.app, free_port()) as url, \
            tachograph.connect(url, workspace="acme", api_key=a.secrets["publisher"], models=ModelRegistry(),
                               model="sim-small-v1") as rt:
        for i in range(3):
            rt.run(spec, {"order": f"O-{i}"}, run_id=f"http-{i}")
    with embedded_runtime(a.ledger, "acme", models=ModelRegistry(), model="sim-small-v1") as rt:
        for i in range(3):
            rt.run(spec, {"order": f"O-{10 + i}"}, run_id=f"embedded-{i}")

    runs = load_runs(a.ledger.store, workflow=WORKFLOW)
    assert sorted(r.run_id for r in runs) == [f"{w}-{i}" for w in ("embedded", "http") for i in range(3)]
    ref = recorded_entry_point(runs)
    assert ref == spec.ref
    agent = load_agent(ref)
    selection = select_runs(runs, agent)
    assert len(selection.runs) == 6 and selection.not_replayable == []
    report = run_replay(selection.runs, agent, ReplayConfig("rp-transports", "2026-11-20T10:00:00Z"),
                        ModelRegistry(), ledger=a.ledger)
    assert {r["status"] for r in report["runs"]} == {"reproduced"}
    assert report["gate"]["passed"] and report["summary"]["recorded_versions"] == {"1.2.0": 6}
    a.ledger.store.close()
