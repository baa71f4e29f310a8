"""Several worker processes appending into one PostgreSQL ledger at once keep it correct."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import queue
import time
from collections import Counter
from typing import Any

from domain import merkle
from domain.checkpoint import Checkpoint
from domain.ledger import Ledger, LedgerConfig
from domain.ports import Incoming, Source
from domain.stores.postgres import PostgresStore
from domain.verify import verify_log
from domain.workload import Workload
from tachograph.contract.canonical import dumps
from tests.factories import ORIGIN, signer

WORKERS = 3
BATCH = 25


def worker_events(worker: int, runs: int = 40) -> list[dict[str, Any]]:
    """The events one worker publishes: its own workspace, so runs are disjoint."""
    return list(Workload(seed=100 + worker, runs=runs, workspaces=(f"ws{worker}",)).events())


def append_worker(
    dsn: str, events: list[dict[str, Any]], name: str, barrier: Any, results: Any
) -> None:
    """One ingest worker: its own store and ledger, the shared key and origin, small batches."""
    store = PostgresStore(dsn)
    try:
        ledger = Ledger(
            store,
            signer(ORIGIN, 1),
            LedgerConfig(origin=ORIGIN, checkpoint_every=150, checkpoint_interval_s=0.05),
            clock=time.time,
        )
        barrier.wait(timeout=60)
        totals: Counter[str] = Counter()
        for start in range(0, len(events), BATCH):
            chunk = [
                Incoming(dumps(ev), Source(kind="kafka", topic=name, partition=0, offset=start + n))
                for n, ev in enumerate(events[start : start + BATCH])
            ]
            report = ledger.append(chunk, consumer=name, offsets={(name, 0): start + len(chunk)})
            totals.update(report.to_json())
        results.put((name, dict(totals)))
    finally:
        store.close()


def run_workers(
    dsn: str, jobs: list[tuple[str, list[dict[str, Any]]]]
) -> dict[str, dict[str, int]]:
    """Start one process per job at the same moment; return each worker's append totals."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    procs = [
        ctx.Process(target=append_worker, args=(dsn, events, name, barrier, results))
        for name, events in jobs
    ]
    for p in procs:
        p.start()
    out: dict[str, dict[str, int]] = {}
    deadline = time.monotonic() + 180
    try:
        while len(out) < len(procs):
            crashed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not crashed, f"a worker process failed (exit codes {crashed})"
            assert time.monotonic() < deadline, "workers did not finish in time"
            with contextlib.suppress(queue.Empty):
                name, totals = results.get(timeout=0.5)
                out[name] = totals
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return out


def check_log(dsn: str) -> tuple[PostgresStore, Ledger]:
    """verify_log over the whole shared ledger, plus checkpoint roots and consistency."""
    store = PostgresStore(dsn)
    ledger = Ledger(store, signer(ORIGIN, 1), LedgerConfig(origin=ORIGIN), clock=time.time)
    ledger.checkpoint()
    result = verify_log(
        store.raw_entries(), [c.note for c in store.checkpoints()], [ledger.signer.vkey],
        origin=ORIGIN,
    )  # fmt: skip
    assert result.ok, (result.position, result.reason)
    size = store.size()
    assert result.entries == size
    cps = store.checkpoints()
    sizes = [c.size for c in cps]
    assert sizes == sorted(sizes) and sizes[-1] == size
    roots = [Checkpoint.parse(c.note.split("\n\n", 1)[0] + "\n").root_hash for c in cps]
    for cp, root in zip(cps, roots, strict=True):
        assert ledger.root(cp.size) == root
        if cp.size < size:
            proof = ledger.consistency_proof(cp.size, size)
            merkle.verify_consistency(cp.size, size, root, roots[-1], proof)
    return store, ledger


def test_concurrent_workers_appending_disjoint_runs_keep_one_verifiable_log(postgres_dsn_factory):
    dsn = postgres_dsn_factory()
    jobs = [(f"worker{w}", worker_events(w)) for w in range(WORKERS)]
    totals = run_workers(dsn, jobs)

    store, _ = check_log(dsn)
    try:
        published = [ev["event_id"] for _, events in jobs for ev in events]
        stored = [r.event_id for r in store.entries()]
        assert Counter(stored) == Counter(published)  # every event exactly once
        for name, events in jobs:
            assert totals[name]["accepted"] == len(events)
            assert totals[name]["quarantined"] == 0
            assert store.offsets(name) == {(name, 0): len(events)}
            mine = [r.event_id for r in store.entries() if r.workspace == events[0]["workspace"]]
            assert mine == [ev["event_id"] for ev in events]  # each worker's order preserved
        assert len(store.checkpoints()) > WORKERS
        owners = [r.workspace for r in store.entries()]
        switches = sum(1 for a, b in itertools.pairwise(owners) if a != b)
        assert switches >= WORKERS, "the workers never interleaved: nothing was concurrent"
    finally:
        store.close()


def test_two_workers_delivered_the_same_events_store_each_one_once(postgres_dsn_factory):
    dsn = postgres_dsn_factory()
    events = worker_events(7, runs=30)
    totals = run_workers(dsn, [("first", events), ("second", events)])

    store, _ = check_log(dsn)
    try:
        stored = [r.event_id for r in store.entries()]
        assert sorted(stored) == sorted(ev["event_id"] for ev in events)
        assert totals["first"]["accepted"] + totals["second"]["accepted"] == len(events)
        assert totals["first"]["quarantined"] == totals["second"]["quarantined"] == 0
        assert totals["first"]["duplicates"] + totals["second"]["duplicates"] == len(events)
        assert store.quarantine_count() == 0
    finally:
        store.close()
