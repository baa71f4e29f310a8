"""On a PostgreSQL ledger the read models are tables of the same database, shared by every API
process: each projects, the tracking row taken FOR UPDATE decides who applies a batch, and no
entry is applied twice."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from api.console.board import TABLES as BOARD_TABLES
from api.console.board import Board
from domain.stores.postgres import PostgresStore
from projections.pgview import PostgresView
from projections.run_index import RUNS, RunFilter, RunIndex
from tests.factories import items, make_ledger, workload_events
from tests.integration.api_support import close_api, make_api, publish


def _all(index: RunIndex, workspaces: tuple[str, ...]) -> list[dict[str, Any]]:
    return [s.to_json() for ws in workspaces for s in index.page(RunFilter(ws), 10**9, None, False)[0]]


def _project(dsn: str, rounds: int) -> None:
    """Another process: its own store and view, catching up as the ledger grows."""
    store = PostgresStore(dsn)
    index = RunIndex(store, PostgresView("run_index", [RUNS], dsn), batch_size=37)
    for _ in range(rounds):
        index.catch_up()
    index.close()
    store.close()


def test_processes_sharing_a_postgres_run_index_apply_every_entry_once(postgres_dsn_factory):
    dsn = postgres_dsn_factory()
    ledger = make_ledger(store=PostgresStore(dsn))
    workspaces = ("ws0", "ws1", "ws2")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_project, args=(dsn, 200)) for _ in range(3)]
    for p in procs:
        p.start()
    local = RunIndex(ledger.store, PostgresView("run_index", [RUNS], dsn), batch_size=53)
    local.start()  # a runner of this process too
    try:
        for n, ws in enumerate(workspaces):
            events = workload_events(runs=40, seed=n, workspaces=(ws,))
            for i in range(0, len(events), 61):
                ledger.append(items(events[i:i + 61], name=f"{ws}.jsonl"))
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        local.ready()
        assert local.view.position() == ledger.store.size()
        assert _all(local, workspaces) == _all(RunIndex(ledger.store), workspaces)  # counted once
    finally:
        local.close()
        ledger.store.close()


def test_two_api_processes_on_one_postgres_ledger_read_what_the_other_was_sent(tmp_path: Path,
                                                                                postgres_dsn_factory):
    dsn = postgres_dsn_factory()
    a = make_api(tmp_path / "a", ledger_url=dsn)
    b = make_api(tmp_path / "b", ledger_url=dsn, signing_key=a.data_dir / "keys" / "ledger.skey")
    try:
        for model in (*a.services.read_models(), *b.services.read_models()):
            model.start()
        events = workload_events(runs=12, seed=7, workspaces=("acme",))
        half = len(events) // 2
        publish(a, events[:half])
        listed_b = b.client.get("/v1/runs", params={"limit": 500}, headers=b.auth("auditor")).json()["runs"]
        publish(b, events[half:])
        listed_a = a.client.get("/v1/runs", params={"limit": 500}, headers=a.auth("auditor")).json()["runs"]
        assert {r["run_id"] for r in listed_b} <= {r["run_id"] for r in listed_a}
        assert listed_a == b.client.get("/v1/runs", params={"limit": 500},
                                        headers=b.auth("auditor")).json()["runs"]
        assert listed_a == [s.to_json() for s in RunIndex(a.ledger.store).page(
            RunFilter("acme"), 500, None, True)[0]]
        board_a, board_b = a.app.state.console.board, b.app.state.console.board
        assert isinstance(board_a, Board) and isinstance(board_b.view, PostgresView)
        assert board_a.pending("acme", a.clock()) == board_b.pending("acme", b.clock()) == \
            Board(a.ledger.store).pending("acme", a.clock())
        assert {t.name for t in BOARD_TABLES} <= _tables(dsn)
    finally:
        for api in (a, b):
            for model in api.services.read_models():
                model.close()
            close_api(api)


def _tables(dsn: str) -> set[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
