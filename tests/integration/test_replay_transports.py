"""A run recorded through the agent runtime replays whichever transport recorded it: runs posted
over HTTP to the platform under uvicorn and runs recorded in process (embedded) replay side by
side with the same code and reproduce; so do runs produced to Kafka and appended by the ingest
worker."""

from __future__ import annotations

import pytest

import tachograph
from ingest.embedded import embedded_runtime
from ingest.worker import IngestWorker, WorkerConfig
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from replay.selection import recorded_entry_point, select_runs
from tachograph.agents import agent_spec, load_agent
from tachograph.models import ModelRegistry
from tests.factories import make_ledger
from tests.harness import free_port
from tests.harness.kafka import GROUP_CONSUMER_TEST_CONFIG
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


@pytest.mark.kafka
def test_runs_recorded_over_kafka_replay_from_the_ledger_the_worker_filled(kafka_broker, topic_factory, tmp_path):
    topic = topic_factory(partitions=2)
    with tachograph.connect(f"kafka://{kafka_broker.bootstrap}/{topic}", workspace="acme", env={},
                            models=ModelRegistry(), model="sim-small-v1") as rt:
        for i in range(4):
            rt.run(lookup, {"order": f"O-{i}"}, run_id=f"kafka-{i}")
    ledger = make_ledger(tmp_path / "ledger.db")
    config = WorkerConfig(bootstrap=kafka_broker.bootstrap, topic=topic, group=f"g-{topic}", until_idle=2.0,
                          assign=True, consumer_config=dict(GROUP_CONSUMER_TEST_CONFIG))
    summary = IngestWorker(ledger, config).run()
    assert summary.accepted > 0 and summary.quarantined == 0

    runs = load_runs(ledger.store, workflow=WORKFLOW)
    assert sorted(r.run_id for r in runs) == [f"kafka-{i}" for i in range(4)]
    agent = load_agent(recorded_entry_point(runs) or "")
    selection = select_runs(runs, agent)
    report = run_replay(selection.runs, agent, ReplayConfig("rp-kafka", "2026-11-20T10:00:00Z"), ModelRegistry())
    assert {r["status"] for r in report["runs"]} == {"reproduced"} and report["gate"]["passed"]
