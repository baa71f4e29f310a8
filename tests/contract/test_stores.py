"""The store contract run against every adapter: in-memory, SQLite and a real PostgreSQL."""

from __future__ import annotations

import sqlite3
import tempfile
import threading

import psycopg
import pytest

from domain.errors import StoreError
from domain.stores.memory import MemoryStore
from domain.stores.postgres import PostgresStore, redact
from domain.stores.sqlite import SQLiteStore
from domain.verify import verify_log
from tests.contract.store_contract import OpenStore, PersistentStoreContract, StoreContract
from tests.factories import items, make_ledger, workload_events


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def open_store(self) -> OpenStore:
        return MemoryStore

    def test_a_finished_transaction_refuses_further_writes(self, store):
        with store.transaction() as tx:
            pass
        with pytest.raises(StoreError, match="already finished"):
            tx.set_meta("k", "v")


LEGACY_ROWS = [  # quarantine rows as a store made before sizes, digests and usage wrote them
    (b"{broken", "contract: not JSON", '{"kind":"http","line":0,"name":"acme/k1"}', None),
    (b"\xffjunk", "contract: not UTF-8", '{"kind":"kafka","offset":3,"partition":0,"topic":"t"}', None),
    (b'{"seq":1}', "contract: x", '{"kind":"file","line":2,"name":"a.jsonl"}', "beta"),
]


def _check_migrated(store) -> None:
    import hashlib

    rows = store.quarantine()
    assert [(r.workspace, r.raw_size, r.raw_sha256, r.kept) for r in rows] == [
        (ws, len(raw), hashlib.sha256(raw).digest(), len(raw))
        for raw, ws in ((b"{broken", "acme"), (b"\xffjunk", None), (b'{"seq":1}', "beta"))
    ]  # the HTTP item is attributed to its key's workspace
    usage = store.quarantine_usage()
    assert {ws: (u.items, u.kept_bytes) for ws, u in usage.items()} == {
        "acme": (1, 7), None: (1, 5), "beta": (1, 9)}


class TestSQLiteStore(StoreContract, PersistentStoreContract):
    @pytest.fixture
    def open_store(self, tmp_path) -> OpenStore:
        return lambda: SQLiteStore(tmp_path / "ledger.db")

    def test_a_store_of_the_previous_schema_gets_quarantine_sizes_digests_and_usage(self, tmp_path):
        import sqlite3

        path = tmp_path / "old.db"
        SQLiteStore(path).close()
        con = sqlite3.connect(path, isolation_level=None)
        con.executescript("DROP TABLE quarantine_usage; ALTER TABLE quarantine DROP COLUMN raw_size; "
                          "ALTER TABLE quarantine DROP COLUMN raw_sha256;")
        con.executemany("INSERT INTO quarantine (raw, reason, source, received, workspace) "
                        "VALUES (?, ?, ?, 't', ?)", LEGACY_ROWS)
        con.close()
        store = SQLiteStore(path)
        try:
            _check_migrated(store)
        finally:
            store.close()

    @pytest.fixture
    def raw_sql(self, tmp_path):
        def run(sql: str, params: tuple) -> None:
            with sqlite3.connect(tmp_path / "ledger.db") as c:  # another connection, as a tamperer's
                c.execute(sql.replace("%s", "?").format(zero_hash="zeroblob(32)"), params)
        return run


class TestPostgresStore(StoreContract, PersistentStoreContract):
    @pytest.fixture
    def dsn(self, postgres_dsn_factory) -> str:
        return postgres_dsn_factory()

    @pytest.fixture
    def open_store(self, dsn) -> OpenStore:
        return lambda: PostgresStore(dsn)

    def test_a_store_of_the_previous_schema_gets_quarantine_sizes_digests_and_usage(self, store, dsn):
        store.close()
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute("DROP TABLE quarantine_usage")
            con.execute("ALTER TABLE quarantine DROP COLUMN raw_size, DROP COLUMN raw_sha256")
            with con.cursor() as cur:
                cur.executemany("INSERT INTO quarantine (raw, reason, source, received, workspace) "
                                "VALUES (%s, %s, %s, 't', %s)", LEGACY_ROWS)
        again = PostgresStore(dsn)
        try:
            _check_migrated(again)
        finally:
            again.close()

    @pytest.fixture
    def raw_sql(self, dsn):
        def run(sql: str, params: tuple) -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(sql.format(zero_hash="'\\x" + "00" * 32 + "'::bytea"), params)
        return run

    def test_appending_ten_thousand_events_takes_a_handful_of_round_trips(self, store):
        ledger = make_ledger(store=store, checkpoint_every=1_000_000)
        batch = items(workload_events(runs=800))[:10_000]
        assert len(batch) == 10_000
        ledger.append(batch[:10])  # warm-up: the first batch of a fresh ledger
        with tempfile.TemporaryFile("w+") as trace:
            store._writer.pgconn.trace(trace.fileno())
            try:
                report = ledger.append(batch[10:])
            finally:
                store._writer.pgconn.untrace()
            trace.seek(0)
            # libpq trace lines: timestamp, direction (F/B), length, message type, contents
            messages = [tuple(line.split("\t")[1:4:2]) for line in trace if line.count("\t") >= 3]
        assert report.accepted == 9_990
        round_trips = messages.count(("B", "ReadyForQuery"))
        assert 0 < round_trips <= 20, messages
        assert messages.count(("F", "CopyData")) > 10  # rows streamed by COPY, not one per call

    def test_a_user_without_create_privilege_can_use_an_existing_ledger(self, store, dsn):
        role = f"rw_{dsn.rsplit('/', 1)[1]}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {role} LOGIN")
            admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
            admin.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
            )
            admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
        limited = PostgresStore(dsn.replace("postgres@", f"{role}@"))
        try:
            report = make_ledger(store=limited).append(items(workload_events(runs=2)))
            assert report.accepted > 0 and limited.size() == report.accepted
        finally:
            limited.close()

    def test_a_wrong_password_fails_with_a_store_error_that_does_not_show_it(self, postgres_server):
        dsn = postgres_server.dsn_for("nope_db").replace("postgres@", "postgres:s3cret-pw@")
        with pytest.raises(StoreError) as info:
            PostgresStore(dsn)
        assert "s3cret-pw" not in str(info.value)
        assert "nope_db" in str(info.value)

    def test_redact_hides_passwords_in_urls_and_keyword_strings(self):
        assert redact("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
        assert redact("host=h password=pw dbname=d") == "host=h password=*** dbname=d"

    def test_several_processes_opening_a_new_database_at_once_create_one_schema(self, dsn):
        errors: list[BaseException] = []

        def open_close() -> None:
            try:
                PostgresStore(dsn).close()
            except BaseException as e:  # collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=open_close) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM head").fetchone() == (1,)

    def test_a_writer_that_cannot_get_the_lock_in_time_fails_cleanly(self, dsn):
        holder = PostgresStore(dsn)
        waiter = PostgresStore(dsn, lock_timeout_s=0.2)
        try:
            with holder.transaction() as tx:
                tx.set_meta("holder", "yes")
                with pytest.raises(StoreError, match="waiting for the ledger write lock"):
                    with waiter.transaction() as wtx:
                        wtx.set_meta("waiter", "yes")
            assert holder.get_meta("holder") == "yes"
            assert holder.get_meta("waiter") is None
            with waiter.transaction() as wtx:  # the waiter recovers once the lock is free
                wtx.set_meta("waiter", "later")
            assert holder.get_meta("waiter") == "later"
        finally:
            holder.close()
            waiter.close()

    def test_a_server_side_disconnect_fails_one_transaction_and_the_next_one_reconnects(
        self, store, dsn
    ):
        ledger = make_ledger(store=store)
        events = workload_events(runs=4)
        ledger.append(items(events[:20]))
        pid = store._writer.info.backend_pid
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreError):
            ledger.append(items(events[20:]))
        report = ledger.append(items(events[20:]))
        assert report.accepted == len(events) - 20
        ids = [r.event_id for r in store.entries()]
        assert ids == [e["event_id"] for e in events]

    def test_parallel_verification_reads_ranges_in_worker_processes(self, store):
        ledger = make_ledger(store=store, checkpoint_every=500)
        ledger.append(items(workload_events(runs=150)))
        ledger.checkpoint()
        result = verify_log(
            store.range_reader(),
            [c.note for c in store.checkpoints()],
            [ledger.signer.vkey],
            origin=ledger.config.origin,
            workers=2,
            chunk_bits=9,
        )
        assert result.ok, result.reason
        assert result.entries == store.size()
        with psycopg.connect(store.dsn, autocommit=True) as admin:  # tamper with one entry
            admin.execute("UPDATE entries SET data = data || ' '::bytea WHERE idx = 700")
        broken = verify_log(
            store.range_reader(),
            [c.note for c in store.checkpoints()],
            [ledger.signer.vkey],
            origin=ledger.config.origin,
            workers=2,
            chunk_bits=9,
        )
        assert not broken.ok and broken.position is not None and broken.position >= 700

    def test_readers_use_their_own_connection(self, store):
        with store.transaction():
            reader_pid = store._reader().info.backend_pid
            assert reader_pid != store._writer.info.backend_pid
