"""Fault tests: workers killed with SIGKILL, rebalances, broker restarts — nothing lost or doubled."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import pytest

from domain.verify import verify_log
from ingest.errors import DeliveryError, PublishBackpressureError
from tachograph.transports import KafkaTransport
from tests.harness import wait_until
from tests.integration.ingest_support import (
    GROUP_ARGS,
    assert_exactly,
    kill9,
    ledger_size,
    log_tail,
    open_ledger_store,
    pids_running,
    produce,
    workload_messages,
)
from tests.integration.ingest_support import start_worker as _start_worker


@pytest.fixture
def start_worker():
    """Start worker subprocesses; whatever still runs at the end of the test is killed."""
    procs = []

    def start(*args, **kw):
        proc = _start_worker(*args, **kw)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        kill9(proc)


def _wait_for_size(db, n: int, timeout: float, procs=()) -> None:
    def done() -> bool:
        for p in procs:
            assert p.poll() is None, f"worker exited early with {p.returncode}:\n{log_tail(p)}"
        return ledger_size(db) >= n

    wait_until(done, timeout, interval=0.2, what=f"ledger size {n}", retry_on=())


def _stop(proc, timeout: float = 30) -> None:
    """SIGTERM: the worker finishes its batch, checkpoints and prints its summary. Sent once the
    worker says it started (its handler is installed): a SIGTERM while Python is still importing
    would end it by the signal's default action instead."""
    wait_until(lambda: "tacho ingest: started" in proc.log_path.read_text(errors="replace"), 30,
               what="the worker's start line")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=timeout) == 0, log_tail(proc)


def _summary(log_path) -> dict:
    text = log_path.read_text()
    start = text.rindex("{\n")
    return json.loads(text[start:])


def _verify(db) -> None:
    store = open_ledger_store(db)
    try:
        vkey = store.get_meta("initial_vkey")
        result = verify_log(store.raw_entries(), [c.note for c in store.checkpoints()], [vkey])
        assert result.ok, result.reason
    finally:
        store.close()


class ChunkProducer(threading.Thread):
    """Publishes chunks of events while the test breaks things; retries a chunk on failure."""

    def __init__(self, bootstrap: str, topic: str, messages, chunk: int = 500, pause: float = 0.05):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages = bootstrap, topic, messages
        self.chunk, self.pause = chunk, pause
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            transport = KafkaTransport(self.bootstrap, self.topic, max_block_ms=5_000,
                                       delivery_timeout_ms=20_000)
            for i in range(0, len(self.messages), self.chunk):
                part = self.messages[i : i + self.chunk]
                for _attempt in range(20):
                    try:
                        for key, eid, value in part:
                            transport.send(key, eid, value)
                        transport.flush(30)
                        break
                    except (DeliveryError, PublishBackpressureError):
                        self.retries += 1  # re-send the whole chunk: the ledger absorbs repeats
                        time.sleep(0.5)
                else:
                    raise AssertionError("could not publish a chunk after 20 attempts")
                time.sleep(self.pause)
            transport.close(10)
        except BaseException as e:
            self.error = e


@pytest.mark.slow
def test_workers_killed_with_sigkill_mid_batch_under_load_lose_and_duplicate_nothing(
    kafka_broker, topic_factory, tmp_path, start_worker
):
    topic = topic_factory(partitions=3)
    messages = workload_messages(3000, seed=21)
    half = len(messages) // 2
    produce(kafka_broker.bootstrap, topic, messages[:half])
    live = ChunkProducer(kafka_broker.bootstrap, topic, messages[half:], chunk=400, pause=0.1)
    live.start()
    data, db = tmp_path / "data", tmp_path / "data" / "ledger.db"
    rng = random.Random(5)
    sizes = []
    for i in range(4):
        proc = start_worker(kafka_broker.bootstrap, topic, data, "--assign", "--batch", "300",
                            log=tmp_path / f"w{i}.log")
        before = ledger_size(db)
        _wait_for_size(db, before + 1, 30, [proc])  # it is appending...
        time.sleep(rng.uniform(0.05, 0.4))  # ...and dies somewhere inside a batch
        kill9(proc)
        sizes.append(ledger_size(db))
    live.join(60)
    assert live.error is None, live.error
    assert sizes == sorted(sizes) and sizes[-1] > 0
    # a killed worker leaves no validation process behind
    wait_until(lambda: not pids_running(topic), 10, what="no process left for the topic")
    final = start_worker(kafka_broker.bootstrap, topic, data, "--assign", "--batch", "300",
                         log=tmp_path / "final.log")
    _wait_for_size(db, len(messages), 60, [final])
    time.sleep(0.5)
    _stop(final)
    assert_exactly(db, [eid for _, eid, _ in messages])
    assert _summary(tmp_path / "final.log")["stopped_by"] == "SIGTERM"
    _verify(db)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_ledger(request, tmp_path):
    """(ledger location, extra worker env): one SQLite file, or one PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "data" / "ledger.db", {}
    dsn = request.getfixturevalue("postgres_dsn_factory")()
    return dsn, {"TACHO_LEDGER_URL": dsn}


@pytest.mark.slow
def test_two_workers_in_one_group_share_a_ledger_and_one_is_killed(
    kafka_broker, topic_factory, tmp_path, start_worker, shared_ledger
):
    db, env = shared_ledger
    topic = topic_factory(partitions=4)
    messages = workload_messages(1500, seed=22)
    produce(kafka_broker.bootstrap, topic, messages[: len(messages) // 3])
    data = tmp_path / "data"
    group = f"g-{topic}"  # a fresh group: Tansu keeps old groups' members around
    a = start_worker(kafka_broker.bootstrap, topic, data, *GROUP_ARGS, "--batch", "200",
                     log=tmp_path / "a.log", group=group, **env)
    # the first worker creates the key and starts appending; the second joins the group later
    _wait_for_size(db, 1, 30, [a])
    b = start_worker(kafka_broker.bootstrap, topic, data, *GROUP_ARGS, "--batch", "200",
                     log=tmp_path / "b.log", group=group, **env)
    live = ChunkProducer(kafka_broker.bootstrap, topic, messages[len(messages) // 3 :], chunk=300,
                     pause=0.2)
    live.start()
    _wait_for_size(db, len(messages) // 2, 60, [a, b])
    kill9(a)
    live.join(60)
    assert live.error is None, live.error
    _wait_for_size(db, len(messages), 60, [b])  # b takes over a's partitions after the rebalance
    time.sleep(0.5)
    _stop(b)
    assert_exactly(db, [eid for _, eid, _ in messages])
    assert _summary(tmp_path / "b.log")["accepted"] > 0
    store = open_ledger_store(db)
    try:
        offsets = store.offsets(group)
    finally:
        store.close()
    assert sorted(p for (_, p) in offsets) == [0, 1, 2, 3]
    assert sum(offsets.values()) == len(messages)
    _verify(db)


@pytest.mark.slow
def test_an_apache_kafka_restart_while_producing_and_consuming_loses_and_duplicates_nothing(
    apache_kafka, topic_factory, tmp_path, start_worker
):
    topic = topic_factory(partitions=2, broker=apache_kafka)
    messages = workload_messages(1200, seed=23)
    data, db = tmp_path / "data", tmp_path / "data" / "ledger.db"
    worker = start_worker(apache_kafka.bootstrap, topic, data, *GROUP_ARGS, "--batch", "200",
                          log=tmp_path / "w.log", group=f"g-{topic}")
    live = ChunkProducer(apache_kafka.bootstrap, topic, messages, chunk=200, pause=0.15)
    live.start()
    _wait_for_size(db, 500, 60, [worker])
    apache_kafka.restart()  # graceful stop + start, same port and data
    live.join(120)
    assert live.error is None, live.error
    _wait_for_size(db, len(messages), 90, [worker])
    time.sleep(0.5)
    _stop(worker)
    assert_exactly(db, [eid for _, eid, _ in messages])
    _verify(db)
