"""Batched integration on a real PostgreSQL: writers that overlap, race, fail and die.

Appends run side by side (``PostgresStore.append_transaction``): each batch locks its runs, gets
its ledger positions, hashes and writes its entries outside the ledger-wide lock, and integrates
them into the tree in position order (docs/decisions/0010-postgres-batched-integration.md).
Whatever the interleaving, every event is stored once, each run's seqs are contiguous in ledger
order, the log verifies and its Merkle root is the one recomputed from the stored bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import queue
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest

from domain.checkpoint import Checkpoint
from domain.errors import StoreError
from domain.ledger import Ledger, LedgerConfig
from domain.ports import Incoming, Source
from domain.records import Record
from domain.stores.postgres import PostgresStore
from domain.verify import verify_log
from domain.workload import Workload
from tachograph.contract.canonical import dumps, loads
from tests.cli_support import tacho
from tests.factories import ORIGIN, signer

BATCH = 20


def open_ledger(store: PostgresStore) -> Ledger:
    """A writer's ledger: the shared key and origin, frequent checkpoints."""
    return Ledger(
        store,
        signer(ORIGIN, 1),
        LedgerConfig(origin=ORIGIN, checkpoint_every=150, checkpoint_interval_s=0.05),
        clock=time.time,
    )


def lines_of(events: list[dict[str, Any]]) -> list[bytes]:
    return [dumps(ev) for ev in events]


def writer(dsn: str, lines: list[bytes], name: str, barrier: Any, results: Any,
           consumer: str | None = None, serial: bool = False) -> None:
    """One ingest worker process: its own store and ledger, batches of BATCH with offsets (of
    its own consumer group and topic, unless ``consumer`` names one that writers share)."""
    store = PostgresStore(dsn, lock_timeout_s=20, serial=serial)
    try:
        ledger = open_ledger(store)
        barrier.wait(timeout=60)
        totals: Counter[str] = Counter()
        for start in range(0, len(lines), BATCH):
            chunk = [
                Incoming(raw, Source(kind="kafka", topic=name, partition=0, offset=start + n))
                for n, raw in enumerate(lines[start : start + BATCH])
            ]
            report = ledger.append(chunk, consumer=consumer or name,
                                   offsets={(consumer or name, 0): start + len(chunk)})
            totals.update(report.to_json())
        stats = store.lock_stats
        results.put((name, dict(totals), (stats.held_s, stats.transactions, stats.entries)))
    finally:
        store.close()


def run_writers(
    dsn: str, jobs: dict[str, list[bytes]], consumer: str | None = None, serial: frozenset[str] = frozenset()
) -> dict[str, tuple[dict[str, int], tuple]]:
    """One process per job, started together (those named in ``serial`` on the old path); each
    job's totals and lock statistics."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(dsn, lines, name, barrier, results, consumer, name in serial))
             for name, lines in jobs.items()]
    for p in procs:
        p.start()
    out: dict[str, tuple[dict[str, int], tuple]] = {}
    deadline = time.monotonic() + 180
    try:
        while len(out) < len(procs):
            crashed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not crashed, f"a writer process failed (exit codes {crashed})"
            assert time.monotonic() < deadline, "writers did not finish in time"
            with contextlib.suppress(queue.Empty):
                name, totals, stats = results.get(timeout=0.5)
                out[name] = (totals, stats)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    return out


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 Merkle tree hash, from scratch (hashlib only)."""
    if not leaves:
        return hashlib.sha256().digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def check_ledger(dsn: str, events: list[dict[str, Any]], records: int = 0) -> PostgresStore:
    """Everything a concurrently written ledger must be; returns its store (caller closes)."""
    store = PostgresStore(dsn)
    ledger = open_ledger(store)
    ledger.checkpoint()
    rows = list(store.entries())
    assert [r.index for r in rows] == list(range(store.size()))
    stored = Counter((r.workspace, r.event_id) for r in rows if r.kind == "event")
    assert stored == Counter((ev["workspace"], ev["event_id"]) for ev in events)  # each once
    assert len(rows) == len(events) + records
    size = len(rows)
    rows = [r for r in rows if r.kind == "event"]
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        seqs[(r.workspace, r.run_id)].append(r.seq)  # type: ignore[arg-type]
    for run, got in seqs.items():
        assert got == list(range(len(got))), f"run {run} has seqs {got} in ledger order"
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(*) FROM held").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM runs WHERE state = ''::bytea").fetchone() == (0,)
    result = verify_log(store.stored_entries(), [c.note for c in store.checkpoints()],
                        [ledger.signer.vkey], origin=ORIGIN)
    assert result.ok, (result.position, result.reason)
    assert result.entries == size
    root = mth([hashlib.sha256(b"\x00" + data).digest() for _, data in store.raw_entries()])
    assert root == ledger.root(size)
    latest = store.latest_checkpoint()
    assert latest is not None and latest.size == size
    assert Checkpoint.parse(latest.note.split("\n\n", 1)[0] + "\n").root_hash == root
    return store


def tacho_verifies(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("TACHO_LEDGER_URL", dsn)
    out = tacho(tmp_path / "auditor", "verify", "--trusted-key", signer(ORIGIN, 1).vkey, "--json")
    return dict(json.loads(out.stdout))


def test_overlapping_writers_store_every_event_once_in_contiguous_runs(
    postgres_dsn_factory, tmp_path, monkeypatch
):
    """Four writers: some runs delivered to two of them, some split between two (the later
    half may arrive first and be held), the rest to one."""
    dsn = postgres_dsn_factory()
    events = list(Workload(seed=41, runs=48, workspaces=("acme", "beta")).events())
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        runs[(ev["workspace"], ev["run_id"])].append(ev)
    owners: dict[str, list[dict[str, Any]]] = {f"w{n}": [] for n in range(4)}
    twice = 0
    for i, run in enumerate(runs.values()):
        a, b = f"w{i % 4}", f"w{(i + 1) % 4}"
        if i % 3 == 0:  # the same events sent to two writers
            owners[a] += run
            owners[b] += run
            twice += len(run)
        elif i % 3 == 1:  # the run split across two writers
            half = len(run) // 2
            owners[a] += run[:half]
            owners[b] += run[half:]
        else:
            owners[a] += run
    order = {id(ev): n for n, ev in enumerate(events)}
    jobs = {name: lines_of(sorted(evs, key=lambda e: order[id(e)])) for name, evs in owners.items()}
    recorder, stop, indexes = PostgresStore(dsn), threading.Event(), []

    def platform_records() -> None:  # the platform writes its records meanwhile
        ledger = open_ledger(recorder)
        while not stop.is_set() and len(indexes) < 60:
            indexes.extend(ledger.append_records(
                [Record("audit.read", "acme", "2026-01-01T00:00:00Z", {"key_id": "k1", "role": "auditor"},
                        {"action": "run.evidence", "n": len(indexes) + k}) for k in range(3)]))
            time.sleep(0.05)

    records = threading.Thread(target=platform_records)
    records.start()
    try:
        out = run_writers(dsn, jobs)
    finally:
        stop.set()
        records.join()
        recorder.close()

    totals = Counter[str]()
    for t, _ in out.values():
        totals.update(t)
    assert totals["accepted"] == len(events)
    assert totals["duplicates"] == twice
    assert totals["quarantined"] == 0
    store = check_ledger(dsn, events, records=len(indexes))
    try:
        assert [r.index for r in store.entries() if r.kind == "record"] == sorted(indexes)
        assert all(next(store.entries(i, i + 1)).event_id == f"record/{i}" for i in indexes)
        for name, lines in jobs.items():
            assert store.offsets(name) == {(name, 0): len(lines)}
        assert sum(stats[2] for _, stats in out.values()) == len(events)  # each integrated once
        writers_of = {(r.workspace, r.event_id): r.index for r in store.entries()}
        mine = {name: {writers_of.get((ev["workspace"], ev["event_id"])) for ev in evs}
                for name, evs in owners.items()}
        assert all(mine.values())
        positions = sorted((i, name) for name, idx in mine.items() for i in idx if i is not None)
        switches = sum(1 for (_, x), (_, y) in itertools.pairwise(positions) if x != y)
        assert switches >= 4, "the writers never interleaved: nothing was concurrent"
    finally:
        store.close()
    report = tacho_verifies(tmp_path, dsn, monkeypatch)
    assert report["ok"] is True and report["entries"] == len(events) + len(indexes)


def test_writers_sharing_a_consumers_offsets_wait_for_each_other_without_deadlock(
    postgres_dsn_factory,
):
    """As during a rebalance, two writers commit offsets of the same consumer group and
    partition: each takes that row's lock before its positions, so neither waits for the other
    while holding them (before that rule, this deadlocked until the lock timeout)."""
    dsn = postgres_dsn_factory()
    jobs = {f"w{n}": lines_of(list(Workload(seed=60 + n, runs=25, workspaces=(f"ws{n}",)).events()))
            for n in range(3)}
    started = time.monotonic()
    out = run_writers(dsn, jobs, consumer="shared")
    assert time.monotonic() - started < 60
    assert sum(t["accepted"] for t, _ in out.values()) == sum(len(v) for v in jobs.values())
    events = [ev for n in range(3) for ev in Workload(seed=60 + n, runs=25, workspaces=(f"ws{n}",)).events()]
    store = check_ledger(dsn, events)
    try:
        assert store.offsets("shared")[("shared", 0)] in {len(v) for v in jobs.values()}
    finally:
        store.close()


def test_writers_on_the_old_serial_path_and_batched_writers_can_share_a_ledger(postgres_dsn_factory):
    """As during a rolling upgrade: a serial writer appends at the head while batched ones hold
    positions; overlaps are refused and redone, and the sequencer resets itself."""
    dsn = postgres_dsn_factory()
    events = {n: list(Workload(seed=80 + n, runs=12, workspaces=(f"ws{n}",)).events()) for n in range(3)}
    out = run_writers(dsn, {f"w{n}": lines_of(evs) for n, evs in events.items()}, serial=frozenset({"w0"}))
    assert sum(t["accepted"] for t, _ in out.values()) == sum(len(v) for v in events.values())
    check_ledger(dsn, [ev for evs in events.values() for ev in evs]).close()


def test_an_event_id_reused_by_runs_of_two_writers_is_stored_once_and_the_other_quarantined(
    postgres_dsn_factory,
):
    """Run locks do not cover one event id in two runs: the store's unique index does, and a
    writer that meets it (or a deadlock on it) redoes its batch with every id looked up."""
    dsn = postgres_dsn_factory()
    events = {n: list(Workload(seed=70 + n, runs=30, workspaces=("acme",)).events()) for n in range(2)}
    events[1] = [loads(dumps(ev).replace(b'"run-', b'"other-run-')) for ev in events[1]]  # own runs
    for k, ev in enumerate(e for e in events[1] if e["seq"] > 0):
        if k % 7 == 0:  # every 7th event of the second writer reuses an id of the first's
            ev["event_id"] = events[0][k]["event_id"]
    clashes = {ev["event_id"] for ev in events[1]} & {ev["event_id"] for ev in events[0]}
    assert len(clashes) > 10
    out = run_writers(dsn, {f"w{n}": lines_of(evs) for n, evs in events.items()})
    totals = Counter[str]()
    for t, _ in out.values():
        totals.update(t)
    store = PostgresStore(dsn)
    try:
        stored = Counter(r.event_id for r in store.entries())
        assert set(stored.values()) == {1} and sum(stored.values()) == totals["accepted"]
        reasons = [q.reason for q in store.quarantine(limit=1000)]
        assert len(reasons) == totals["quarantined"] > 0
        assert all(r.startswith("conflict: event_id") for r in reasons), reasons[:5]
        assert {q.event_id for q in store.quarantine(limit=1000)} <= clashes
        # what was neither stored nor refused waits behind a refused event of its run
        assert totals["accepted"] + totals["quarantined"] + totals["held"] == len(events[0]) + len(events[1])
        open_ledger(store).checkpoint()
        result = verify_log(store.stored_entries(), [c.note for c in store.checkpoints()],
                            [signer(ORIGIN, 1).vkey], origin=ORIGIN)
        assert result.ok, result.reason
    finally:
        store.close()


def test_a_batch_that_fails_after_sequencing_leaves_a_hole_that_the_next_writer_closes(
    postgres_dsn_factory,
):
    dsn = postgres_dsn_factory()
    events = list(Workload(seed=5, runs=6).events())
    failed, store = PostgresStore(dsn), PostgresStore(dsn)
    ledger = open_ledger(store)
    ledger.append([Incoming(raw, Source("file", name="a", line=n)) for n, raw in enumerate(lines_of(events[:10]))])

    class Boom(Exception):
        pass

    with pytest.raises(Boom), failed.append_transaction() as tx:
        assert tx.sequence(7) == 10
        raise Boom
    report = ledger.append([Incoming(raw, Source("file", name="b", line=n))
                            for n, raw in enumerate(lines_of(events[10:]))])
    assert report.accepted == len(events) - 10
    assert [o.index for o in report.results] == list(range(10, len(events)))  # from the hole on
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT epoch, next FROM sequencer").fetchone() == (1, len(events))
    check_ledger(dsn, events).close()
    failed.close()
    store.close()


def sequence_and_hang(dsn: str, ready: Any) -> None:
    """A writer that gets its positions, writes entries, and hangs before integrating them."""
    store = PostgresStore(dsn)
    with store.append_transaction() as tx:
        tx.sequence(4)
        tx.set_meta("doomed", "yes")
        ready.set()
        time.sleep(600)


def test_a_writer_killed_before_integrating_does_not_stop_the_others(postgres_dsn_factory):
    dsn = postgres_dsn_factory()
    events = list(Workload(seed=9, runs=5).events())
    store = PostgresStore(dsn)
    ledger = open_ledger(store)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    doomed = ctx.Process(target=sequence_and_hang, args=(dsn, ready))
    doomed.start()
    done: list[Any] = []
    try:
        assert ready.wait(60), "the doomed writer never sequenced"
        appender = threading.Thread(target=lambda: done.append(ledger.append(
            [Incoming(raw, Source("file", name="x", line=n)) for n, raw in enumerate(lines_of(events))])))
        appender.start()
        time.sleep(1.0)
        assert not done, "the append went ahead of a pending predecessor"
        doomed.kill()  # kill -9: its transaction rolls back, its assignment lock goes with it
        appender.join(timeout=30)
        assert done and done[0].accepted == len(events)
    finally:
        doomed.kill()
        doomed.join()
    assert store.get_meta("doomed") is None
    check_ledger(dsn, events).close()
    store.close()


def test_a_batch_holds_no_ledger_wide_lock_while_it_writes_its_entries(postgres_dsn_factory):
    """Between getting its positions and its turn to integrate, a batch lets others take the
    ledger-wide lock (the head row); on the old serial path it holds it from its start. The
    lock statistics count what the lock covered. (How long it is held: bench/postgres_store.py.)"""

    class Done(Exception):
        pass

    dsn = postgres_dsn_factory()
    writing, other = PostgresStore(dsn), PostgresStore(dsn, lock_timeout_s=2)
    open_ledger(writing).append([Incoming(raw, Source("file", name="a", line=n))
                                 for n, raw in enumerate(lines_of(list(Workload(seed=3, runs=3).events())))])
    size = writing.size()
    stats = writing.lock_stats
    assert stats.transactions == 2 and stats.entries == size and stats.held_s > 0  # opening, appending
    with pytest.raises(Done), writing.append_transaction() as tx:
        tx.lock_runs([("acme", "new-run")])
        assert tx.sequence(2) == size
        with other.transaction() as head_locked:  # the head row lock, from another writer
            assert head_locked.head().size == size
        assert tx.head().size == size  # now this batch takes it, to integrate
        raise Done
    serial = PostgresStore(dsn, serial=True)
    with pytest.raises(Done), serial.append_transaction():
        with pytest.raises(StoreError, match="ledger write lock"), other.transaction():
            pass
        raise Done
    for store in (writing, other, serial):
        store.close()


def test_voiding_stale_positions_waits_briefly_for_the_head_then_redoes_the_batch(postgres_dsn_factory):
    """The void runs on the sequencer connection while the writer's transaction keeps its locks: a
    writer holding the head row may be waiting for one of them, a cycle PostgreSQL cannot see.
    The void gives up after VOID_WAIT_S and the batch is redone instead of waiting out the lock
    timeout; appends go on once the head is free."""
    from domain.errors import StoreRetryError
    from domain.stores.postgres import VOID_WAIT_S

    dsn = postgres_dsn_factory()
    store = PostgresStore(dsn, lock_timeout_s=30)
    ledger = Ledger(store, signer(), LedgerConfig(origin=ORIGIN), time.time)
    events = list(Workload(seed=5, runs=2, workspaces=("ws",)).events())
    ledger.append([Incoming(dumps(e), Source("test")) for e in events[:3]])
    try:
        with psycopg.connect(dsn) as holder:
            holder.execute("SELECT 1 FROM head WHERE id = 1 FOR UPDATE")  # as a writer in its turn would
            with store.append_transaction() as tx:
                tx.sequence(1)
                began = time.monotonic()
                with pytest.raises(StoreRetryError, match="redone"):
                    tx._void(0, tx.first + 1)  # type: ignore[attr-defined]
                waited = time.monotonic() - began
            assert VOID_WAIT_S * 0.9 <= waited < VOID_WAIT_S + 5
        report = ledger.append([Incoming(dumps(e), Source("test")) for e in events[3:]])
        assert report.accepted == len(events) - 3
        assert store.size() == len(events)
    finally:
        store.close()
