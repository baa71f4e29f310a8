"""The server's verifier: rounds only on change, long tails in bounded rounds, a thread that
starts again after it stopped."""

from __future__ import annotations

from api.log_verifier import LogVerifier
from api.metrics import Metrics
from tests.factories import FakeClock, items, make_ledger, workload_events


def _counts(metrics: Metrics) -> tuple[float, float]:
    return (metrics.verifications.labels("full")._value.get(),
            metrics.verifications.labels("incremental")._value.get())


def test_a_round_runs_only_when_the_ledger_or_its_checkpoints_changed(tmp_path) -> None:
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=10**6, checkpoint_interval_s=10**6)
    events = workload_events(runs=3)
    ledger.append(items(events[:10]))  # a fresh ledger's first append is signed
    metrics = Metrics()
    verifier = LogVerifier(ledger, FakeClock(), metrics)
    first = verifier.step()
    assert first is not None and first.kind == "full" and first.result.ok
    assert verifier.step() is first and _counts(metrics) == (1, 0)  # nothing new: no round
    ledger.append(items(events[10:]))  # not signed: no checkpoint is due
    grown = verifier.step()
    assert grown is not None and grown.kind == "incremental" and grown.verified_from == 10
    assert grown.result.entries == ledger.store.size() and grown.result.checkpoint_size == 10
    ledger.checkpoint(force=True)  # a new checkpoint, no new entry: a round too
    signed = verifier.step()
    assert signed is not None and signed.kind == "incremental" and signed.result.checkpoint_size == ledger.store.size()
    assert verifier.step() is signed and _counts(metrics) == (1, 2)


def test_a_long_tail_is_verified_in_bounded_rounds(tmp_path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    events = workload_events(runs=30)
    ledger.append(items(events[:50]))
    verifier = LogVerifier(ledger, FakeClock(), Metrics(), max_round=100)
    assert verifier.step() is not None
    ledger.append(items(events[50:]))
    size = ledger.store.size()
    seen = []
    while (status := verifier.step()) is not None and status.result.entries < size:
        assert status.result.ok and verifier.behind
        seen.append(status.result.entries)
        assert len(seen) < 100
    assert status is not None and status.result.ok and not verifier.behind
    assert seen == list(range(150, size, 100))


def test_the_thread_stops_and_starts_again_and_refresh_waits_for_a_look_at_the_ledger_now(tmp_path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    events = workload_events(runs=4)
    ledger.append(items(events[:20]))
    verifier = LogVerifier(ledger, FakeClock(), Metrics(), interval_s=3600)
    verifier.start()
    first = verifier.refresh(30)
    assert first is not None and first.result.entries == 20
    verifier.stop()
    assert not verifier.background
    ledger.append(items(events[20:]))
    verifier.start()  # the lifespan of an app may run again
    try:
        again = verifier.refresh(30)
        assert again is not None and again.kind == "incremental" and again.result.entries == ledger.store.size()
    finally:
        verifier.stop()
