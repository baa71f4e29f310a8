"""The assertions of eventsourcing's ``TrackingRecorderTestCase``, run against each of our views
(its module needs pycryptodome to import, so they are restated here): tracking ids only move
forward, ``max_tracking_id`` and ``has_tracking_id`` answer per application, ``wait`` returns,
times out or is interrupted."""

from __future__ import annotations

from collections.abc import Callable
from threading import Event
from typing import Any

import duckdb
import pytest
from eventsourcing.persistence import IntegrityError, Tracking, WaitInterruptedError

from projections.sqlview import SQLiteView


@pytest.fixture(params=["sqlite", "postgres", "duckdb"])
def make_view(request: Any) -> Callable[[], Any]:
    return _factory(request.param, request)


@pytest.fixture(params=["sqlite", "postgres"])
def make_sql_view(request: Any) -> Callable[[], Any]:
    return _factory(request.param, request)


def _factory(kind: str, request: Any) -> Callable[[], Any]:
    if kind == "duckdb":  # the analytics file's recorder: no ledger position of its own
        from projections.duckdb_tracking import DuckDBTrackingRecorder

        def duck() -> Any:
            rec = DuckDBTrackingRecorder(duckdb.connect())
            rec.create_table()
            return rec

        return duck
    if kind == "sqlite":
        factory: Callable[[], Any] = lambda: SQLiteView("contract", [], None)  # noqa: E731
    else:
        from projections.pgview import PostgresView

        dsn = request.getfixturevalue("postgres_dsn_factory")()
        factory = lambda: PostgresView("contract", [], dsn)  # noqa: E731

    def make() -> Any:
        view = factory()
        view.open("test.example/log", 0)
        return view

    return make


def test_insert_tracking(make_view) -> None:
    rec = make_view()
    t1, t2, t3 = Tracking("upstream1", 21), Tracking("upstream1", 22), Tracking("upstream2", 21)
    for t in (t1, t2, t3):
        rec.insert_tracking(t)
    for t in (t1, t2, t3):
        with pytest.raises(IntegrityError):
            rec.insert_tracking(t)
    assert rec.max_tracking_id("upstream1") == 22
    assert rec.max_tracking_id("upstream2") == 21
    assert rec.max_tracking_id("upstream3") is None
    assert rec.has_tracking_id("upstream1", None) and rec.has_tracking_id("upstream1", 22)
    assert not rec.has_tracking_id("upstream1", 23) and not rec.has_tracking_id("upstream2", 22)
    rec.insert_tracking(Tracking("upstream1", 24))
    with pytest.raises(IntegrityError):  # can't fill in the gap
        rec.insert_tracking(Tracking("upstream1", 23))
    assert rec.has_tracking_id("upstream1", 23)


def test_wait(make_view) -> None:
    rec = make_view()
    rec.wait("upstream1", None)
    with pytest.raises(TimeoutError):
        rec.wait("upstream1", 21, timeout=0.1)
    rec.insert_tracking(Tracking("upstream1", 21))
    rec.wait("upstream1", 10)
    rec.wait("upstream1", 21)
    with pytest.raises(TimeoutError):
        rec.wait("upstream1", 22, timeout=0.1)
    interrupt = Event()
    interrupt.set()
    with pytest.raises(WaitInterruptedError):
        rec.wait("upstream1", 22, interrupt=interrupt)


def test_a_view_starts_at_position_zero_of_the_ledger(make_sql_view) -> None:
    rec = make_sql_view()
    assert rec.max_tracking_id("ledger") == 0 and rec.position() == 0
    rec.wait("ledger", 0, timeout=0.1)
