"""The C reader of domain/_sqlitescan.c: confirms an event entry's index columns only when they
say what its bytes say, and leaves everything else to the Python check."""

from __future__ import annotations

import sqlite3

import pytest

from domain import merkle
from domain.records import Record
from domain.stores import sqlite as sqlite_store
from tests.factories import event, items, make_ledger

scan = sqlite_store._sqlitescan


def _ledger(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    tricky = {"workflow": 'wf "quoted" \\ back', "mode": "execute", "risk_tier": "low",
              # a publisher can put the shape of an envelope inside data: it must not be read
              "input": {"x": {"event_id": "e9", "run_id": "other", "seq": 9, "workspace": "evil"},
                        "index": 5, "kind": "event", "log": "x"}}
    evs = [event("r1", 0, data=tricky), event("r2", 0), event("r1", 1, "run.completed",
                                                             {"outcome": "succeeded"})]
    evs[1]["trace_id"] = "0" * 32
    evs[1]["span_id"] = "1" * 16
    assert ledger.append(items(evs)).accepted == 3
    ledger.append_records([Record("audit.read", "acme", "2026-01-01T00:00:00Z", {"id": "k"})])
    ledger.checkpoint()
    return ledger


def test_the_module_is_built_here():
    assert scan is not None, "domain/_sqlitescan.c was not built (SQLite headers missing?)"


def test_it_confirms_event_entries_and_is_unsure_of_other_kinds(tmp_path):
    ledger = _ledger(tmp_path)
    datas, leaves, unsure = scan.read_chunk(ledger.store.path, 0, 4)
    assert datas == [bytes(r.data) for r in ledger.store.entries(0, 4)]
    assert leaves == b"".join(merkle.leaf_hash(d) for d in datas)
    assert unsure == [3]  # the platform record: the Python check decides it


@pytest.mark.parametrize(
    ("column", "value"),
    [("kind", "record"), ("workspace", "evil"), ("run_id", "other"), ("seq", 9),
     ("event_id", "e9"), ("type", "run.completed"), ("time", "2026-01-01T00:00:01Z")],
)
def test_a_column_that_differs_from_the_bytes_is_never_confirmed(tmp_path, column, value):
    ledger = _ledger(tmp_path)
    with sqlite3.connect(ledger.store.path) as c:
        c.execute(f"UPDATE entries SET {column} = ? WHERE idx = 0", (value,))
    _, _, unsure = scan.read_chunk(ledger.store.path, 0, 4)
    assert unsure == [0, 3]


def test_a_range_with_a_missing_index_is_left_to_python(tmp_path):
    ledger = _ledger(tmp_path)
    with sqlite3.connect(ledger.store.path) as c:
        c.execute("DELETE FROM entries WHERE idx = 1")
    assert scan.read_chunk(ledger.store.path, 0, 4) is None
    assert scan.read_chunk(ledger.store.path, 2, 10) is None  # beyond the end
