"""The serve-time housekeeper: signs a due tail, expires held events, stops promptly."""

from __future__ import annotations

import time

from api.housekeeping import Housekeeper
from tests.factories import FakeClock, event, items, make_ledger


def test_a_round_signs_a_due_tail_and_quarantines_an_expired_hold(tmp_path):
    clock = FakeClock()
    ledger = make_ledger(tmp_path / "l.db", clock=clock, checkpoint_interval_s=5.0, held_timeout_s=60.0)
    ledger.append(items([event("r1", 0)]))
    ledger.append(items([event("r1", 1, "tool.called", {
        "call_id": "c", "tool": "t", "args": {}, "status": "ok", "latency_ms": 1, "side_effect": "none"})]))
    ledger.append(items([event("r1", 3, "run.completed", {"outcome": "succeeded"})]))  # held: seq 2 missing
    keeper = Housekeeper(ledger)
    keeper.step()
    assert keeper.expired == 0 and ledger.store.latest_checkpoint().size == 1
    clock.advance(61)
    keeper.step()
    assert keeper.expired == 1 and keeper.checkpoints == 1
    assert ledger.store.latest_checkpoint().size == ledger.store.size() == 2
    assert ledger.store.quarantine()[-1].reason.startswith("gap: run 'r1' seq 3")


def test_the_thread_stops_promptly_and_runs_rounds_while_alive(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", checkpoint_interval_s=0.01)
    keeper = Housekeeper(ledger, tick_s=0.02)
    keeper.start()
    ledger.append(items([event("r1", 0)]))
    deadline = time.monotonic() + 10
    while (cp := ledger.store.latest_checkpoint()) is None or cp.size < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    keeper.stop()
    assert time.monotonic() - started < 2 and not keeper._thread.is_alive()
