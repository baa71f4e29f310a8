"""The test harness itself, against real services: Kafka brokers, PostgreSQL, Chromium."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections import defaultdict

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.harness.kafka import GROUP_CONSUMER_TEST_CONFIG

N_MESSAGES = 100


def _produce(bootstrap: str, topic: str, n: int, prefix: str = "msg") -> dict[int, list[bytes]]:
    """Send n keyed messages; return {partition: [values in offset order]} from the acks."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [
            (
                f"{prefix}-{i:03d}".encode(),
                producer.send(topic, key=f"k{i % 7}".encode(), value=f"{prefix}-{i:03d}".encode()),
            )
            for i in range(n)
        ]
        producer.flush(timeout=30)
        acked: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for value, fut in futures:
            md = fut.get(timeout=30)
            acked[md.partition].append((md.offset, value))
    finally:
        producer.close(timeout=10)
    return {p: [v for _, v in sorted(rows)] for p, rows in acked.items()}


def _consume_assigned(
    bootstrap: str, topic: str, partitions: int, n: int, timeout: float = 30.0
) -> dict[int, list[bytes]]:
    """Manual assignment from the beginning (no group join), until n records arrive."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got: dict[int, list[bytes]] = defaultdict(list)
        deadline = time.monotonic() + timeout
        while sum(map(len, got.values())) < n and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                got[tp.partition].extend(r.value for r in records)
    finally:
        consumer.close()
    return dict(got)


def test_produce_consume_100_manual_assignment(kafka_broker, topic_factory):
    topic = topic_factory(partitions=3)
    expected = _produce(kafka_broker.bootstrap, topic, N_MESSAGES)
    assert sum(map(len, expected.values())) == N_MESSAGES
    assert len(expected) > 1, "keys should spread over several partitions"

    got = _consume_assigned(kafka_broker.bootstrap, topic, 3, N_MESSAGES)

    assert got == expected  # exact messages, and order per partition
    assert sorted(v for vs in got.values() for v in vs) == [
        f"msg-{i:03d}".encode() for i in range(N_MESSAGES)
    ]


def test_produce_consume_100_consumer_group(kafka_broker, topic_factory):
    """Group subscribe + commit. GROUP_CONSUMER_TEST_CONFIG (3 s session): Tansu completes
    a join only after a timeout that follows session_timeout_ms (default 10 s -> ~23 s)."""
    topic = topic_factory(partitions=2)
    expected = _produce(kafka_broker.bootstrap, topic, N_MESSAGES, prefix="grp")
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=f"{topic}-g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **GROUP_CONSUMER_TEST_CONFIG,
    )
    got: dict[int, list[bytes]] = defaultdict(list)
    try:
        t0 = time.monotonic()
        while sum(map(len, got.values())) < N_MESSAGES and time.monotonic() - t0 < 45:
            for tp, records in consumer.poll(timeout_ms=500).items():
                got[tp.partition].extend(r.value for r in records)
        elapsed = time.monotonic() - t0
        consumer.commit()
        committed = {p: consumer.committed(TopicPartition(topic, p)) for p in expected}
    finally:
        consumer.close()
    assert dict(got) == expected
    assert elapsed < 15, f"group join + consume took {elapsed:.1f}s"
    assert committed == {p: len(vs) for p, vs in expected.items()}


def test_topic_factory_names_are_unique(kafka_broker, topic_factory):
    names = {topic_factory(create=False) for _ in range(5)}
    assert len(names) == 5


def test_apache_kafka_restart_keeps_messages(apache_kafka, topic_factory):
    topic = topic_factory(partitions=2, broker=apache_kafka)
    expected = _produce(apache_kafka.bootstrap, topic, N_MESSAGES, prefix="durable")
    port = apache_kafka.port

    apache_kafka.restart()

    assert apache_kafka.running and apache_kafka.port == port
    assert _consume_assigned(apache_kafka.bootstrap, topic, 2, N_MESSAGES) == expected
    # and the restarted broker still accepts writes
    more = _produce(apache_kafka.bootstrap, topic, 10, prefix="after")
    assert sum(map(len, more.values())) == 10


@pytest.mark.slow
def test_apache_kafka_survives_sigkill(apache_kafka, topic_factory):
    """SIGKILL (no clean shutdown): acked messages are still there after recovery. Slower
    (~12 s): the controller waits for the old broker session to expire before re-registering."""
    topic = topic_factory(partitions=1, broker=apache_kafka)
    expected = _produce(apache_kafka.bootstrap, topic, N_MESSAGES, prefix="crash")
    apache_kafka.restart(hard=True)
    assert _consume_assigned(apache_kafka.bootstrap, topic, 1, N_MESSAGES) == expected


def test_postgres_create_table_insert_read(postgres_dsn_factory):
    dsn = postgres_dsn_factory()
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, body text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events (id, body) VALUES (%s, %s)",
                [(i, f"event {i}") for i in range(10)],
            )
        conn.commit()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, body FROM events ORDER BY id").fetchall()
        dbname = conn.execute("SELECT current_database()").fetchone()[0]
    assert rows == [(i, f"event {i}") for i in range(10)]
    assert dbname.startswith("t_")


def test_postgres_databases_are_isolated(postgres_dsn_factory):
    a, b = postgres_dsn_factory(), postgres_dsn_factory("harness_named_db")
    assert a != b and b.endswith("/harness_named_db")
    with psycopg.connect(a) as conn:
        conn.execute("CREATE TABLE only_in_a (x int)")
    with psycopg.connect(b) as conn:
        assert conn.execute("SELECT to_regclass('only_in_a')").fetchone() == (None,)


def test_chromium_reads_element_from_local_http_server(browser, tmp_path):
    from selenium.webdriver.common.by import By

    (tmp_path / "index.html").write_text(
        "<!doctype html><title>tacho</title>"
        "<h1 id='greeting'>Hello</h1>"
        "<script>document.getElementById('greeting').textContent += ', Tachograph';</script>"
    )

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        assert browser.title == "tacho"
        assert browser.find_element(By.ID, "greeting").text == "Hello, Tachograph"
        browser.get("data:text/html,<p id='p'>from a data URL</p>")
        assert browser.find_element(By.ID, "p").text == "from a data URL"
    finally:
        server.shutdown()
        server.server_close()
