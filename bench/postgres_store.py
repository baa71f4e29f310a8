"""PostgreSQL ledger store benchmark: scaling out appends, beside baselines measured in the same run.

Every configuration appends the same amount of generated events (batches of 5,000 by default,
one transaction each, with consumer offsets) through ``Ledger.append`` into a fresh database:

- ``old path``: ``PostgresStore(serial=True)``, one writer: the ledger-wide lock (the head row)
  held for the whole transaction, as before batched integration. The baseline of every ratio;
- ``batched x1 / x2 / x4``: the default store, with 1, 2 and 4 writer processes appending
  disjoint runs at once (wall time from a common start barrier to the last commit);
- ``serial section ceiling``: events/s if only the serial section ran, i.e. entries integrated
  divided by the seconds the ledger-wide lock was held (sequencing + integration + commit);
- ``CPU ceiling``: events/s the machine's cores allow for the whole path, i.e. cores divided by
  the CPU seconds one event costs (writer processes plus every PostgreSQL process);
- ``floor``: plain psycopg, no ledger: parse each event, SHA-256-chain it, ``COPY`` the rows
  into an indexed table, one transaction per batch -- the least any PostgreSQL-backed log does;
- ``SQLite``: the same ledger over the embedded ``SQLiteStore``;
- per configuration, the share of writer time spent waiting for the ledger-wide lock, and the
  cores busy during it (writer processes, PostgreSQL, the whole machine: other processes count);
- ``verify``: ``verify_log`` reading every entry back from PostgreSQL.

With ``--rounds R`` every configuration runs R times, interleaved, and the median is reported.
Without ``--dsn`` a throwaway server is started from Debian's binaries (tests/harness), with
durability switched back ON (fsync, synchronous_commit, full_page_writes) so commits cost what
they cost in production. Usage:

    .venv/bin/python bench/postgres_store.py [--events 100000] [--batch 5000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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
WRITERS = {"old path x1": (True, 1), "batched x1": (False, 1), "batched x2": (False, 2),
           "batched x4": (False, 4)}
BASELINE = "old path x1"


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


def _worker(
    dsn: str, part: tuple[int, str, int], batch: int, serial: bool, barrier: Any, out: Any
) -> None:
    """One writer process; it keeps its connections open until the parent has measured the
    server's CPU (a closed connection's backend stops being counted until it is reaped)."""
    lines = workload(*part)
    store = PostgresStore(dsn, serial=serial)
    try:
        make_ledger(store)
        barrier.wait(timeout=300)
        cpu = time.process_time()
        append_all(store, lines, batch)
        s = store.lock_stats
        out.put({"cpu": time.process_time() - cpu, "lock_s": s.held_s, "wait_s": s.waited_s,
                 "lock_entries": s.entries, "events": len(lines)})
        barrier.wait(timeout=300)
    finally:
        store.close()


def writers(dsn: str, events: int, batch: int, serial: bool, count: int,
            server_cpu: Callable[[], float]) -> dict[str, Any]:
    """One process per writer, ``events`` split between them (disjoint runs), started at once."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(count + 1)
    out = ctx.Queue()
    parts = [(events // count, f"ws{w}", 20 + w) for w in range(count)]
    procs = [ctx.Process(target=_worker, args=(dsn, p, batch, serial, barrier, out)) for p in parts]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)
    server, machine = server_cpu(), machine_cpu()
    t = time.perf_counter()
    results: list[dict[str, Any]] = []
    while len(results) < len(procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            raise SystemExit(f"a writer failed: exit codes {[p.exitcode for p in procs]}")
        with contextlib.suppress(queue.Empty):
            results.append(out.get(timeout=0.5))
    wall = time.perf_counter() - t
    server, machine = server_cpu() - server, machine_cpu() - machine
    barrier.wait(timeout=300)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a writer failed with exit code {p.exitcode}")
    n = sum(r["events"] for r in results)
    lock_s = sum(r["lock_s"] for r in results)
    client = sum(r["cpu"] for r in results)
    return {
        "eps": n / wall,
        "lock_us_per_event": 1e6 * lock_s / sum(r["lock_entries"] for r in results),
        "ceiling_eps": n / lock_s,
        "waiting_for_lock": sum(r["wait_s"] for r in results) / (count * wall),  # share of writer time
        "cpu_us_per_event": 1e6 * (client + server) / n if server else None,
        "cores_writers": client / wall,
        "cores_server": server / wall if server else None,
        "cores_busy": machine / wall,  # every process on the machine, ours included
        # events per CPU-second that the writers and the server got: flat if nothing but the
        # cores limits scaling out
        "eps_per_core": n / (client + server) if server else None,
    }


def verify_eps(dsn: str) -> float:
    store = PostgresStore(dsn)
    try:
        t = time.perf_counter()
        result = verify_log(
            store.raw_entries(), [c.note for c in store.checkpoints()],
            [NoteSigner.from_seed(ORIGIN, SEED).vkey], origin=ORIGIN,
        )  # fmt: skip
        assert result.ok, result.reason
        return result.entries / (time.perf_counter() - t)
    finally:
        store.close()


def machine_cpu() -> float:
    """CPU seconds every process on the machine has used since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def postmaster_cpu(pid: int | None) -> Callable[[], float]:
    """CPU seconds used so far by a PostgreSQL server: its postmaster, the children it reaped and
    its live children (backends, WAL writer, checkpointer); 0 when the server is not ours."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p: str) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    def total() -> float:
        if pid is None:
            return 0.0
        fields = stat(str(pid))
        ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        for p in os.listdir("/proc"):
            if p.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    f = stat(p)
                    if int(f[1]) == pid:
                        ticks += int(f[11]) + int(f[12])
        return ticks / tick

    return total


def run(dsn_for: Callable[[str], str], events: int, batch: int, rounds: int,
        server_cpu: Callable[[], float]) -> dict[str, Any]:
    lines = workload(events)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in WRITERS}
    other: dict[str, list[float]] = {"floor": [], "sqlite": []}
    load = [os.getloadavg()[0]]
    last: dict[str, str] = {}
    for r in range(rounds):
        order = list(WRITERS.items())
        for name, (serial, count) in order if r % 2 == 0 else order[::-1]:  # alternate the order
            dsn = last[name] = dsn_for(f"bench_{name.replace(' ', '_')}_{r}")
            samples[name].append(writers(dsn, len(lines), batch, serial, count, server_cpu))
            load.append(os.getloadavg()[0])
        other["floor"].append(len(lines) / floor(dsn_for(f"bench_floor_{r}"), lines, batch))
        with tempfile.TemporaryDirectory() as tmp:
            other["sqlite"].append(len(lines) / append_all(SQLiteStore(Path(tmp) / "l.db"), lines, batch))
    verify = verify_eps(last["batched x1"])

    def med(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    rows: dict[str, Any] = {"events": len(lines), "batch": batch, "rounds": rounds,
                            "cores": os.cpu_count(), "load_average": [round(x, 1) for x in load]}
    for name, runs in samples.items():
        rows[name] = {k: med([s[k] for s in runs]) for k in runs[0]}
        rows[name]["spread_eps"] = [round(s["eps"]) for s in runs]
    rows["floor"] = {"eps": med(other["floor"]), "spread_eps": [round(x) for x in other["floor"]]}
    rows["sqlite"] = {"eps": med(other["sqlite"]), "spread_eps": [round(x) for x in other["sqlite"]]}
    rows["verify_eps"] = verify
    base = rows[BASELINE]["eps"]
    for name in [*WRITERS, "floor", "sqlite"]:
        rows[name]["vs_baseline"] = rows[name]["eps"] / base
    batched = rows["batched x1"]
    rows["lock_per_event_old_vs_batched"] = rows[BASELINE]["lock_us_per_event"] / batched["lock_us_per_event"]
    rows["two_writers_vs_one"] = rows["batched x2"]["eps"] / batched["eps"]
    rows["four_writers_vs_one"] = rows["batched x4"]["eps"] / batched["eps"]
    # the same ratios within each round (configurations measured minutes apart are noisier)
    per_round = {name: [s["eps"] for s in runs] for name, runs in samples.items()}
    rows["per_round"] = {
        f"{name} / {over}": [round(a / b, 2) for a, b in zip(per_round[name], per_round[over], strict=True)]
        for name, over in (("batched x1", BASELINE), ("batched x2", BASELINE), ("batched x4", BASELINE),
                           ("batched x2", "batched x1"), ("batched x4", "batched x1"))
    }
    cpu = batched["cpu_us_per_event"]
    rows["cpu_ceiling_eps"] = None if not cpu else (os.cpu_count() or 1) * 1e6 / cpu
    return rows


def print_report(rows: dict[str, Any]) -> None:
    print(f"{rows['events']:,} events, batches of {rows['batch']:,}, median of {rows['rounds']} "
          f"round(s); {rows['cores']} cores, load average {rows['load_average']}")
    base = rows[BASELINE]["eps"]
    print(f"  {'configuration':<34}{'events/s':>10}{'vs old path':>13}{'lock held/event':>17}"
          f"{'waiting':>9}   cores busy: writers, server, all   per core   runs")
    for name in WRITERS:
        r = rows[name]
        server = "-" if r["cores_server"] is None else f"{r['cores_server']:.2f}"
        print(f"  {'ledger append, ' + name:<34}{r['eps']:>10,.0f}{r['vs_baseline']:>12.2f}x"
              f"{r['lock_us_per_event']:>14.1f} us{r['waiting_for_lock']:>8.0%}"
              f"   {r['cores_writers']:.2f}, {server}, {r['cores_busy']:.2f}{'':>13}"
              f"{'-' if r['eps_per_core'] is None else format(r['eps_per_core'], ',.0f'):>8}   {r['spread_eps']}")
    ceiling = rows["batched x1"]["ceiling_eps"]
    print(f"  {'serial section ceiling (x1)':<34}{ceiling:>10,.0f}{ceiling / base:>12.2f}x"
          f"   (x2: {rows['batched x2']['ceiling_eps']:,.0f}, x4: {rows['batched x4']['ceiling_eps']:,.0f})")
    if rows["cpu_ceiling_eps"]:
        c = rows["cpu_ceiling_eps"]
        print(f"  {'CPU ceiling (cores / CPU per event)':<34}{c:>10,.0f}{c / base:>12.2f}x"
              f"   ({rows['batched x1']['cpu_us_per_event']:.0f} us CPU per event, writer + server)")
    for name, label in (("floor", "floor (psycopg COPY + chain)"), ("sqlite", "ledger append, SQLite")):
        r = rows[name]
        print(f"  {label:<34}{r['eps']:>10,.0f}{r['vs_baseline']:>12.2f}x   {'':>13}   {r['spread_eps']}")
    print(f"  {'verify from PostgreSQL':<34}{rows['verify_eps']:>10,.0f}")
    print(f"  lock held per event, old path / batched: {rows['lock_per_event_old_vs_batched']:.1f}x")
    print(f"  batched, two writers / one: {rows['two_writers_vs_one']:.2f}x; "
          f"four / one: {rows['four_writers_vs_one']:.2f}x")
    for label, ratios in rows["per_round"].items():
        print(f"  per round, {label}: {ratios}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=1)
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

        rows = run(dsn_for, args.events, args.batch, args.rounds, postmaster_cpu(None))
    else:
        from tests.harness.postgres import PostgresServer

        with PostgresServer() as server:
            with psycopg.connect(server.dsn, autocommit=True) as c:
                for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                    c.execute(f"ALTER SYSTEM SET {setting} = on")
                c.execute("SELECT pg_reload_conf()")
            assert server.proc is not None
            rows = run(server.create_database, args.events, args.batch, args.rounds,
                       postmaster_cpu(server.proc.pid))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_report(rows)


if __name__ == "__main__":
    main()
