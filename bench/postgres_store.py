"""PostgreSQL ledger store benchmark: append and verify throughput beside baselines, same run.

Measured on one generated workload (batches of 5,000 events by default):

- ``ledger/postgres``: ``Ledger.append`` over ``PostgresStore`` (validate, chain, Merkle,
  checkpoints, one transaction per batch);
- ``ledger/sqlite``: the same through the embedded ``SQLiteStore`` (the default deployment);
- ``floor/postgres``: plain psycopg, no ledger: parse each event, SHA-256-chain it, ``COPY``
  the rows into an indexed table, one transaction per batch -- the least any PostgreSQL-backed
  signed log must do;
- ``ledger/postgres x N``: N worker processes appending disjoint runs into one ledger at once;
- ``verify/postgres``: ``verify_log`` reading every entry back from PostgreSQL.

Without ``--dsn`` a throwaway server is started from Debian's binaries (tests/harness), with
durability switched back ON (fsync, synchronous_commit, full_page_writes) so commits cost what
they cost in production. Usage:

    .venv/bin/python bench/postgres_store.py [--events 100000] [--batch 5000] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from domain.ledger import Ledger, LedgerConfig  # noqa: E402
from domain.note import NoteSigner  # noqa: E402
from domain.ports import Incoming, LedgerStore, Source  # noqa: E402
from domain.stores.postgres import PostgresStore  # noqa: E402
from domain.stores.sqlite import SQLiteStore  # noqa: E402
from domain.verify import verify_log  # noqa: E402
from domain.workload import Workload  # noqa: E402
from tachograph.contract.canonical import dumps, loads  # noqa: E402

ORIGIN = "bench.example/postgres"
SEED = b"\x07" * 32


def workload(events: int, workspace: str = "acme", seed: int = 11) -> list[bytes]:
    """``events`` canonical event lines of a deterministic workload."""
    out: list[bytes] = []
    for ev in Workload(seed=seed, runs=max(1, events // 10), workspaces=(workspace,)).events():
        out.append(dumps(ev))
        if len(out) >= events:
            break
    return out


def make_ledger(store: LedgerStore) -> Ledger:
    return Ledger(
        store,
        NoteSigner.from_seed(ORIGIN, SEED),
        LedgerConfig(origin=ORIGIN, checkpoint_every=10_000, checkpoint_interval_s=5.0),
        clock=time.time,
    )


def append_all(store: LedgerStore, lines: list[bytes], batch: int) -> float:
    """Seconds to append every line through the ledger, ``batch`` per transaction."""
    ledger = make_ledger(store)
    t = time.perf_counter()
    for start in range(0, len(lines), batch):
        chunk = [
            Incoming(raw, Source(kind="kafka", topic="agent-events", partition=0, offset=start + n))
            for n, raw in enumerate(lines[start : start + batch])
        ]
        report = ledger.append(
            chunk, consumer="bench", offsets={("agent-events", 0): start + len(chunk)}
        )
        assert report.quarantined == 0, report.results[:3]
    ledger.checkpoint()
    return time.perf_counter() - t


def floor(dsn: str, lines: list[bytes], batch: int) -> float:
    """Plain psycopg: parse, chain with SHA-256, COPY into an indexed table per batch."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE floor_log (idx BIGINT PRIMARY KEY, data BYTEA NOT NULL, "
            "hash BYTEA NOT NULL, event_id TEXT UNIQUE)"
        )
        t = time.perf_counter()
        prev = b"\0" * 32
        for start in range(0, len(lines), batch):
            with (
                c.transaction(),
                c.cursor() as cur,
                cur.copy("COPY floor_log FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(["int8", "bytea", "bytea", "text"])
                for i, line in enumerate(lines[start : start + batch], start):
                    ev = loads(line)
                    prev = hashlib.sha256(prev + line).digest()
                    copy.write_row((i, line, prev, ev["event_id"]))
        return time.perf_counter() - t


def _worker(dsn: str, part: tuple[int, str, int], batch: int, barrier: Any, out: Any) -> None:
    lines = workload(*part)
    store = PostgresStore(dsn)
    try:
        make_ledger(store)
        barrier.wait(timeout=120)
        out.put(append_all(store, lines, batch))
    finally:
        store.close()


def concurrent(dsn: str, parts: list[tuple[int, str, int]], batch: int) -> float:
    """Wall seconds for one process per (events, workspace, seed) part to append at once."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(parts) + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(dsn, p, batch, barrier, out)) for p in parts]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    t = time.perf_counter()
    done = 0
    while done < len(procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            raise SystemExit(f"a worker failed: exit codes {[p.exitcode for p in procs]}")
        with contextlib.suppress(queue.Empty):
            out.get(timeout=0.5)
            done += 1
    wall = time.perf_counter() - t
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {p.exitcode}")
    return wall


def verify_seconds(dsn: str) -> tuple[float, int]:
    store = PostgresStore(dsn)
    try:
        t = time.perf_counter()
        result = verify_log(
            store.raw_entries(), [c.note for c in store.checkpoints()],
            [NoteSigner.from_seed(ORIGIN, SEED).vkey], origin=ORIGIN,
        )  # fmt: skip
        seconds = time.perf_counter() - t
        assert result.ok, result.reason
        return seconds, result.entries
    finally:
        store.close()


def run(dsn_for: Any, events: int, batch: int, workers: int) -> dict[str, Any]:
    lines = workload(events)
    rows: dict[str, Any] = {"events": len(lines), "batch": batch}

    pg_dsn = dsn_for("bench_ledger")
    pg = append_all(PostgresStore(pg_dsn), lines, batch)
    with tempfile.TemporaryDirectory() as tmp:
        lite = append_all(SQLiteStore(Path(tmp) / "ledger.db"), lines, batch)
    fl = floor(dsn_for("bench_floor"), lines, batch)
    parts = [(len(lines) // workers, f"ws{w}", 20 + w) for w in range(workers)]
    conc = concurrent(dsn_for("bench_concurrent"), parts, batch)
    ver, n = verify_seconds(pg_dsn)

    total_parts = sum(p[0] for p in parts)
    rows["append_postgres_eps"] = round(len(lines) / pg)
    rows["append_sqlite_eps"] = round(len(lines) / lite)
    rows["floor_postgres_eps"] = round(len(lines) / fl)
    rows["append_postgres_concurrent_eps"] = round(total_parts / conc)
    rows["workers"] = workers
    rows["verify_postgres_eps"] = round(n / ver)
    rows["postgres_vs_floor"] = round(pg / fl, 2)
    rows["postgres_vs_sqlite"] = round(pg / lite, 2)
    rows["concurrent_vs_single"] = round((total_parts / conc) / (len(lines) / pg), 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dsn", help="server maintenance DSN (databases bench_* are created in it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.dsn:
        base = args.dsn.rsplit("/", 1)[0]

        def dsn_for(name: str) -> str:
            with psycopg.connect(args.dsn, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {name}")
                c.execute(f"CREATE DATABASE {name}")
            return f"{base}/{name}"

        rows = run(dsn_for, args.events, args.batch, args.workers)
    else:
        from tests.harness.postgres import PostgresServer

        with PostgresServer() as server:
            with psycopg.connect(server.dsn, autocommit=True) as c:
                for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                    c.execute(f"ALTER SYSTEM SET {setting} = on")
                c.execute("SELECT pg_reload_conf()")
            rows = run(server.create_database, args.events, args.batch, args.workers)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{rows['events']:,} events, batches of {rows['batch']:,}")
    print(f"  ledger append, PostgreSQL     {rows['append_postgres_eps']:>9,} events/s")
    print(f"  ledger append, SQLite         {rows['append_sqlite_eps']:>9,} events/s")
    print(f"  floor (psycopg COPY + chain)  {rows['floor_postgres_eps']:>9,} events/s")
    print(
        f"  ledger append, PostgreSQL x{rows['workers']} {rows['append_postgres_concurrent_eps']:>9,} events/s"
    )
    print(f"  verify from PostgreSQL        {rows['verify_postgres_eps']:>9,} events/s")
    print(f"  PostgreSQL / floor time   {rows['postgres_vs_floor']}x")
    print(f"  PostgreSQL / SQLite time  {rows['postgres_vs_sqlite']}x")


if __name__ == "__main__":
    main()
