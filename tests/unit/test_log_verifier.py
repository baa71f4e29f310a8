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


def test_a_full_round_over_a_large_ledger_runs_in_a_process_of_its_own(tmp_path) -> None:
    """Its verdict is the one this process gives; the state it hands back is bounded and the
    rounds after it read the runs it dropped back from the store."""
    ledger = make_ledger(tmp_path / "l.db")
    events = workload_events(runs=12)
    ledger.append(items(events[: len(events) // 2]))
    isolated = LogVerifier(ledger, FakeClock(), Metrics(), isolate_from=1, kept_runs=2)
    here = LogVerifier(ledger, FakeClock(), Metrics(), isolate_from=None)
    a, b = isolated.step(), here.step()
    assert a is not None and b is not None and a.kind == b.kind == "full"
    assert isolated.isolated_rounds == 1 and here.isolated_rounds == 0
    assert (a.result.ok, a.result.entries, a.result.root, a.result.runs) == (
        b.result.ok, b.result.entries, b.result.root, b.result.runs)
    assert isolated.state is not None and len(isolated.state.chains) == 2
    ledger.append(items(events[len(events) // 2:]))
    a, b = isolated.step(), here.step()
    assert a is not None and b is not None and a.kind == b.kind == "incremental"
    assert a.result.ok and (a.result.entries, a.result.root, a.result.runs) == (
        b.result.entries, b.result.root, b.result.runs)
    assert isolated.state is not None and isolated.state.chains.looked_up > 0


def test_a_failed_isolated_round_reports_what_failed(tmp_path) -> None:
    import sqlite3

    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items(workload_events(runs=3)))
    sqlite3.connect(ledger.store.path, isolation_level=None).execute(
        "UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), '\"seq\":', '\"seq\": ') AS BLOB) WHERE idx = 4")
    a = LogVerifier(ledger, FakeClock(), Metrics(), isolate_from=1).step()
    b = LogVerifier(ledger, FakeClock(), Metrics(), isolate_from=None).step()
    assert a is not None and b is not None and not a.result.ok
    assert (a.result.position, a.result.reason) == (b.result.position, b.result.reason) == (4, b.result.reason)


def test_an_isolated_round_is_abandoned_and_its_process_killed_when_the_verifier_stops(tmp_path) -> None:
    import pytest

    from domain.errors import TachographError
    from domain.verify_round import FullRound

    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items(workload_events(runs=3)))
    args = FullRound(ledger.store.range_reader(), [c.note for c in ledger.store.checkpoints()],
                     [ledger.signer.vkey], None, None, 2)
    with pytest.raises(TachographError, match="stopped"):
        args.run_apart(lambda: True, poll_s=0.01)  # the child needs far longer than 10 ms to start
    assert args.run_apart(lambda: False).ok


def test_a_script_with_no_main_guard_is_not_run_again_by_an_isolated_round(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "serve_it.py"
    script.write_text(
        "import time\n"
        "from pathlib import Path\n"
        "from api.log_verifier import LogVerifier\n"
        "from api.metrics import Metrics\n"
        "from tests.factories import items, make_ledger, workload_events\n"
        f"ledger = make_ledger(Path({str(tmp_path / 'l.db')!r}))\n"
        "ledger.append(items(workload_events(runs=3)))\n"
        "status = LogVerifier(ledger, time.time, Metrics(), isolate_from=1).step()\n"
        "print('ran', status.result.ok)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=root, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["ran True"]


def test_the_whole_ledger_is_verified_again_every_full_every_s_and_an_old_rewrite_is_found(tmp_path) -> None:
    import sqlite3

    clock = FakeClock()
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items(workload_events(runs=4)))
    verifier = LogVerifier(ledger, clock, Metrics(), full_every_s=3600)
    first = verifier.step()
    assert first is not None and first.kind == "full" and first.result.ok
    sqlite3.connect(ledger.store.path, isolation_level=None).execute(  # an old entry, rewritten
        "UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), '\"seq\":', '\"seq\": ') AS BLOB) WHERE idx = 3")
    clock.advance(3599)
    assert verifier.step() is first  # nothing new, no full round due: the rewrite is not read
    clock.advance(1)
    again = verifier.step()
    assert again is not None and again.kind == "full" and not again.result.ok and again.result.position == 3


def test_a_round_larger_than_a_pipes_buffer_reaches_its_process(tmp_path) -> None:
    """Hundreds of checkpoints make the pickled round larger than 64 KiB (a pipe's buffer)."""
    from domain.verify_round import FullRound

    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=1)
    for ev in workload_events(runs=40)[:400]:
        ledger.append(items([ev]))
    notes = [c.note for c in ledger.store.checkpoints()]
    args = FullRound(ledger.store.range_reader(), notes, [ledger.signer.vkey], None, None, 2)
    assert len(__import__("pickle").dumps(args)) > 1 << 16
    result = args.run_apart(lambda: False)
    assert result.ok and result.entries == ledger.store.size() and result.checkpoint_size == ledger.store.size()
