"""The read models are eventsourcing projections with tracking: persisted, resumed, atomic.

What is counted here is what the projection reads from the ledger store: a restart reads no
entry before the recorded position, and a crash between a batch's rows and its tracking cannot
leave one without the other (they commit in one transaction).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from api.console.board import TABLES as BOARD_TABLES
from api.console.board import Board
from domain.stores.sqlite import SQLiteStore
from projections.errors import ProjectionError
from projections.run_index import RUNS, RunFilter, RunIndex
from projections.sqlview import SQLiteView
from projections.tracking import LedgerSubscription
from tests.factories import items, make_ledger, workload_events

ROOT = Path(__file__).resolve().parents[2]


class CountingStore:
    """A ledger store that notes every range of entries read from it (all else passes through)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.ranges: list[tuple[int, int | None]] = []

    def entries(self, start: int = 0, end: int | None = None) -> Any:
        self.ranges.append((start, end))
        return self.store.entries(start, end)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @property
    def lowest(self) -> int | None:
        return min((s for s, _ in self.ranges), default=None)


def _ledger(tmp_path: Path, runs: int = 60, seed: int = 3) -> Any:
    ledger = make_ledger(tmp_path / "ledger.db")
    ledger.append(items(workload_events(runs=runs, seed=seed, workspaces=("acme", "beta"))))
    return ledger


def _index(store: Any, path: Path, **kw: Any) -> RunIndex:
    return RunIndex(store, SQLiteView("run_index", [RUNS], path), **kw)


def _all(index: RunIndex) -> list[dict[str, Any]]:
    return [s.to_json() for ws in ("acme", "beta") for s in index.page(RunFilter(ws), 10**9, None, False)[0]]


def test_a_restarted_run_index_resumes_from_its_recorded_position_and_reads_nothing_before(tmp_path):
    ledger = _ledger(tmp_path, runs=40)
    view_file = tmp_path / "views" / "run_index.db"
    first = _index(ledger.store, view_file)
    first.ready()
    position = first.view.position()
    assert position == ledger.store.size()
    first.close()

    ledger.append(items(workload_events(runs=30, seed=9, workspaces=("acme",))))
    counting = CountingStore(ledger.store)
    again = _index(counting, view_file)
    assert again.view.position() == position  # the position survived the restart
    again.ready()
    assert counting.lowest == position  # nothing before the recorded position was read
    assert sum(1 for _ in ledger.store.entries(position)) == ledger.store.size() - position
    # the incremental result equals a rebuild from the first entry (invariant 5)
    rebuilt = RunIndex(ledger.store)
    assert _all(again) == _all(rebuilt)
    again.close()


def test_a_restarted_board_resumes_from_its_recorded_position(tmp_path):
    ledger = _ledger(tmp_path)
    view_file = tmp_path / "views" / "board.db"
    board = Board(ledger.store, SQLiteView("console_board", BOARD_TABLES, view_file))
    board.ready()
    position = board.view.position()
    board.close()
    ledger.append(items(workload_events(runs=20, seed=11, workspaces=("acme",))))
    counting = CountingStore(ledger.store)
    again = Board(counting, SQLiteView("console_board", BOARD_TABLES, view_file))
    again.ready()
    assert counting.lowest == position
    fresh = Board(ledger.store)
    now = time.time()
    for ws in ("acme", "beta"):
        assert again.pending(ws, now) == fresh.pending(ws, now)
        assert again.decided(ws) == fresh.decided(ws)
        assert again.applied(ws) == fresh.applied(ws)
        assert again.breaches(ws) == fresh.breaches(ws)


def test_a_second_start_over_a_big_ledger_reads_no_entry_and_takes_a_fraction_of_the_first(tmp_path):
    ledger = make_ledger(tmp_path / "ledger.db")
    ledger.append(items(workload_events(runs=1800, seed=4, workspaces=("acme",))))
    size = ledger.store.size()
    assert size > 20_000
    view_file = tmp_path / "views" / "run_index.db"
    t0 = time.perf_counter()
    cold = _index(ledger.store, view_file)
    cold.get("acme", "run-0000001")
    cold_s = time.perf_counter() - t0
    cold.close()

    counting = CountingStore(ledger.store)
    t0 = time.perf_counter()
    warm = _index(counting, view_file)
    summary = warm.get("acme", "run-0000001")
    warm_s = time.perf_counter() - t0
    assert summary is not None and counting.ranges == []  # not one entry read again
    assert warm_s < cold_s / 10, (warm_s, cold_s)
    warm.close()


CRASH = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from domain.stores.sqlite import SQLiteStore
    from projections.run_index import RUNS, RunIndex
    from projections.sqlview import SQLiteView, ViewTx
    mode = {mode!r}
    if mode == "between":  # die after the batch's rows are written, before its tracking
        flush = ViewTx._flush
        def dying(self):
            flush(self)
            if self.start > 0:
                os._exit(9)
        ViewTx._flush = dying
    store = SQLiteStore({ledger!r})
    index = RunIndex(store, SQLiteView("run_index", [RUNS], __import__("pathlib").Path({view!r})),
                     batch_size=97)
    print("ready", flush=True)
    while True:
        index.catch_up()
""")


def _crash(tmp_path: Path, ledger_path: Path, view_file: Path, mode: str) -> subprocess.Popen[bytes]:
    script = tmp_path / f"project_{mode}.py"
    script.write_text(CRASH.format(root=str(ROOT), mode=mode, ledger=str(ledger_path), view=str(view_file)))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)


def _consistent_with_its_position(ledger: Any, view_file: Path) -> int:
    """The view's rows are exactly those of a projection of the entries before its position."""
    view = SQLiteView("run_index", [RUNS], view_file)
    position = view.position()
    stored = view.query(f"SELECT * FROM {RUNS.name} ORDER BY first_index", (), RUNS)
    prefix = RunIndex(ledger.store)
    prefix.catch_up(until=position)
    assert prefix.view.position() == position
    expected = prefix.view.query(f"SELECT * FROM {RUNS.name} ORDER BY first_index", (), RUNS)
    assert stored == expected
    view.close()
    return position


def test_a_projection_killed_between_its_rows_and_its_tracking_keeps_neither(tmp_path):
    ledger = _ledger(tmp_path, runs=80)
    view_file = tmp_path / "views" / "run_index.db"
    proc = _crash(tmp_path, tmp_path / "ledger.db", view_file, "between")
    assert proc.wait(60) == 9  # it died inside its second batch, rows written, not committed
    position = _consistent_with_its_position(ledger, view_file)
    assert position == 97  # the first batch only: the second's rows went with it
    resumed = _index(ledger.store, view_file)
    assert _all(resumed) == _all(RunIndex(ledger.store))


def test_a_projection_killed_at_any_moment_resumes_to_the_same_rows(tmp_path):
    ledger = _ledger(tmp_path, runs=400)
    view_file = tmp_path / "views" / "run_index.db"
    for delay in (0.4, 0.7, 1.0):
        proc = _crash(tmp_path, tmp_path / "ledger.db", view_file, "anywhere")
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _consistent_with_its_position(ledger, view_file)
    resumed = _index(ledger.store, view_file)
    assert _all(resumed) == _all(RunIndex(ledger.store))


def test_a_view_projected_from_another_ledger_starts_again_from_the_first_entry(tmp_path):
    ledger = _ledger(tmp_path)
    view_file = tmp_path / "views" / "run_index.db"
    _index(ledger.store, view_file).ready()
    other = make_ledger(tmp_path / "other.db", origin="other.example/log")
    other.append(items(workload_events(runs=5, seed=1, workspaces=("acme",))))
    counting = CountingStore(other.store)
    index = _index(counting, view_file)
    index.ready()
    assert counting.lowest == 0
    assert _all(index) == _all(RunIndex(other.store))


def test_the_runner_follows_the_ledger_and_a_read_waits_for_what_was_appended_before_it(tmp_path):
    ledger = _ledger(tmp_path, runs=10)
    index = _index(ledger.store, tmp_path / "views" / "run_index.db", wait_s=5)
    index.source.idle_s = 30  # only a reader's nudge can wake the runner in time
    index.start()
    try:
        for seed in range(20, 30):
            evs = workload_events(runs=2, seed=seed, workspaces=("acme",))
            evs = [{**e, "run_id": f"{e['run_id']}-{seed}", "event_id": f"{e['event_id']}-{seed}"} for e in evs]
            ledger.append(items(evs))
            run_id = evs[-1]["run_id"]
            summary = index.get("acme", run_id)
            assert summary is not None
            assert summary.events == len(ledger.store.run_entries("acme", run_id)) > 1
        assert index.runner is not None and index.runner.subscription.read == ledger.store.size()
    finally:
        index.stop()


def test_a_failed_projection_answers_with_its_error_and_is_restarted(tmp_path, monkeypatch):
    ledger = _ledger(tmp_path, runs=5)
    index = _index(ledger.store, tmp_path / "views" / "run_index.db", wait_s=5)
    broken = True
    process = index.projection.process_event

    def failing(batch: Any, tracking: Any) -> None:
        if broken:
            raise RuntimeError("disk on fire")
        process(batch, tracking)

    monkeypatch.setattr(index.projection, "process_event", failing)
    index.start()
    try:
        with pytest.raises(ProjectionError, match="disk on fire"):
            index.ready()
        broken = False
        index.ready()  # a new runner, from the recorded position
        assert index.view.position() == ledger.store.size()
    finally:
        index.stop()


def test_a_subscription_yields_batches_with_the_tracking_of_their_last_entry(tmp_path):
    ledger = _ledger(tmp_path, runs=5)
    size = ledger.store.size()
    sub = LedgerSubscription(SQLiteStore(tmp_path / "ledger.db"), 3, ("run.completed",), batch_size=10,
                             follow=False)
    batches = list(sub)
    assert batches[0][0].start == 3 and batches[-1][1].notification_id == size
    assert all(b.end == t.notification_id and b.end - b.start <= 10 for b, t in batches)
    assert all(r.event_type == "run.completed" for b, _ in batches for r in b.rows)
    assert sub.read == size - 3
