"""Projections are a pure function of the ledger prefix: any batch split equals a rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.ports import LedgerStore
from projections.errors import LedgerMismatchError
from projections.projector import Projector, connect
from tests.factories import append_deciding, make_ledger
from tests.unit.test_projections_figures import build_store, hand_built, workload_events

TABLES = {"events": "idx", "run_facts": "workspace, run_id"}


def snapshot(con: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every projected table, in a stable order, plus the position."""
    out = {name: con.execute(f"SELECT * FROM {name} ORDER BY {order}").fetchall()
           for name, order in TABLES.items()}
    out["state"] = con.execute("SELECT * FROM projection_state ORDER BY name").fetchall()
    out["tracking"] = con.execute("SELECT * FROM tracking ORDER BY application_name").fetchall()
    return out


@pytest.fixture(scope="module")
def ledger_store(tmp_path_factory: pytest.TempPathFactory) -> LedgerStore:
    tmp = tmp_path_factory.mktemp("rebuild")
    return build_store(tmp / "ledger.db", hand_built() + workload_events(40))


@pytest.fixture(scope="module")
def rebuilt(ledger_store: LedgerStore, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    con = connect(tmp_path_factory.mktemp("full") / "a.duckdb")
    status = Projector(ledger_store, con).rebuild()
    assert status.position == ledger_store.size()
    yield snapshot(con)
    con.close()


# few, coarse examples: every batch costs a transaction, and the splits that matter (a run cut
# across batches, one-entry batches, a restart mid-way) show up within a handful of cuts
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=5))
def test_incremental_projection_in_random_batches_equals_a_rebuild(
    ledger_store: LedgerStore, rebuilt: dict[str, Any], cuts: list[int], tmp_path_factory
) -> None:  # type: ignore[no-untyped-def]
    con = connect(tmp_path_factory.mktemp("inc") / "a.duckdb")
    try:
        for n, limit in enumerate(cuts):
            # a fresh projector (as after a restart) for every other step
            projector = Projector(ledger_store, con, batch_size=40 + (limit * 7) % 200)
            projector.catch_up(limit=limit)
            if n % 2:
                projector = Projector(ledger_store, con, batch_size=limit)
        # the rest in mid-sized batches (a cut of 1 here would mean one transaction per entry)
        Projector(ledger_store, con, batch_size=40 + cuts[0] % 200).catch_up()
        assert snapshot(con) == rebuilt
    finally:
        con.close()


def test_projecting_a_ledger_as_it_grows_equals_a_rebuild(tmp_path: Path) -> None:
    events = hand_built() + workload_events(30)
    ledger = make_ledger(tmp_path / "ledger.db")
    con = connect(tmp_path / "inc.duckdb")
    step = 37
    for i in range(0, len(events), step):
        append_deciding(ledger, events[i:i + step])
        Projector(ledger.store, con, batch_size=25).catch_up()
    full = connect(tmp_path / "full.duckdb")
    Projector(ledger.store, full).rebuild()
    assert snapshot(con) == snapshot(full)
    assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == len(events)


def test_a_rebuild_replaces_everything(ledger_store: LedgerStore, rebuilt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    con = connect(tmp_path / "a.duckdb")
    projector = Projector(ledger_store, con)
    projector.catch_up()
    con.execute("DELETE FROM run_facts WHERE run_id = 'h-1'")
    projector.rebuild()
    assert snapshot(con) == rebuilt


def test_a_database_projected_from_another_ledger_is_refused(
    ledger_store: LedgerStore, tmp_path: Path
) -> None:
    con = connect(tmp_path / "a.duckdb")
    Projector(ledger_store, con).catch_up()
    other = make_ledger(tmp_path / "other.db", origin="other.example/log")
    with pytest.raises(LedgerMismatchError, match="rebuild"):
        Projector(other.store, con).catch_up()


def test_a_database_made_before_its_ledger_had_an_origin_takes_that_ledgers_origin(
    ledger_store: LedgerStore, tmp_path: Path
) -> None:
    """A projector started before the ledger's first entry (compose starts it beside the writers)
    projected nothing from any ledger: the ledger that then appears is its own."""
    con = connect(tmp_path / "a.duckdb")
    from domain.stores.memory import MemoryStore

    empty = MemoryStore()  # no ledger in it yet: no origin
    assert not empty.get_meta("origin")
    Projector(empty, con).catch_up()
    assert con.execute("SELECT value FROM projection_state WHERE name = 'origin'").fetchall() == [("",)]
    status = Projector(ledger_store, con).catch_up()
    assert status.position == ledger_store.size()
    origin = ledger_store.get_meta("origin")
    assert con.execute("SELECT value FROM projection_state WHERE name = 'origin'").fetchall() == [(origin,)]
    other = make_ledger(tmp_path / "other.db", origin="other.example/log")
    with pytest.raises(LedgerMismatchError, match="rebuild"):
        Projector(other.store, con).catch_up()


def test_a_database_ahead_of_its_ledger_is_refused(tmp_path: Path) -> None:
    events = hand_built()
    big = build_store(tmp_path / "big.db", events)
    small = build_store(tmp_path / "small.db", events[:5])
    con = connect(tmp_path / "a.duckdb")
    Projector(big, con).catch_up()
    with pytest.raises(LedgerMismatchError, match="only 5 entries"):
        Projector(small, con).catch_up()


def test_an_analytics_file_of_schema_8_keeps_its_position_in_the_tracking_table(ledger_store, tmp_path):
    con = connect(tmp_path / "old.duckdb")
    projector = Projector(ledger_store, con)
    projector.rebuild()
    size = ledger_store.size()
    # as schema 8 left it: the position a row of projection_state, no tracking table
    con.execute("DROP TABLE tracking")
    con.execute("INSERT INTO projection_state VALUES ('position', ?)", [str(size)])
    con.execute("UPDATE projection_state SET value = '8' WHERE name = 'schema_version'")
    assert Projector(ledger_store, con).ensure() is False  # migrated, not rebuilt
    assert Projector(ledger_store, con).position() == size
    assert con.execute("SELECT value FROM projection_state WHERE name = 'schema_version'").fetchall() == [("9",)]
