"""Several trusted checkpoints: each proven against the ledger, so none can launder another."""

from __future__ import annotations

from domain.ledger import Ledger
from domain.stores.memory import MemoryStore
from domain.verify import Trusted, verify_log
from tests.factories import FakeClock, items, make_ledger, workload_events


def grown(seed: int, runs: int, clock: FakeClock | None = None) -> Ledger:
    ledger = make_ledger(store=MemoryStore(), clock=clock or FakeClock())
    ledger.append(items(workload_events(runs=runs, seed=seed)))
    ledger.checkpoint()
    return ledger


def check(ledger: Ledger, *trusted: str | Trusted):
    return verify_log(
        ledger.store.raw_entries(),
        [c.note for c in ledger.store.checkpoints()],
        [ledger.signer.vkey],
        trusted_checkpoints=trusted,
    )


def test_several_trusted_checkpoints_of_one_history_pass_in_any_order():
    ledger = grown(seed=3, runs=4)
    old = ledger.checkpoint()
    ledger.append(items(workload_events(runs=3, seed=8, workspaces=("other",))))
    new = ledger.checkpoint()
    assert old is not None and new is not None and old.size < new.size
    result = check(ledger, new.note, old.note)
    assert result.ok, result.reason
    assert result.trusted_checkpoints == [old.size, new.size]
    assert result.checkpoint_size == new.size


def test_a_newer_checkpoint_of_a_rewritten_ledger_does_not_launder_an_older_trusted_one():
    honest = grown(seed=3, runs=4)
    old = honest.checkpoint()
    # the rewrite: the same key re-signs a different history, larger than the old checkpoint
    rewritten = grown(seed=5, runs=8)
    new = rewritten.checkpoint()
    assert old is not None and new is not None and new.size > old.size
    assert check(rewritten, new.note).ok  # alone, the newer checkpoint vouches for the rewrite
    result = check(rewritten, Trusted(old.note, "trusted checkpoint old.note"), new.note)
    assert not result.ok
    assert result.reason.startswith(f"trusted checkpoint old.note (size {old.size}) does not match")
    assert "rewritten" in result.reason and result.position == old.size - 1


def test_two_trusted_checkpoints_of_one_size_with_different_roots_are_a_fork():
    a = grown(seed=3, runs=4)
    b = make_ledger(store=MemoryStore())
    b.append(items(workload_events(runs=40, seed=6))[: a.store.size()])
    b.checkpoint()
    ca, cb = a.checkpoint(), b.checkpoint()
    assert ca is not None and cb is not None and ca.size == cb.size and ca.note != cb.note
    result = check(a, Trusted(ca.note, "A"), Trusted(cb.note, "B"))
    assert not result.ok and result.reason.startswith("A and B are both of size") and "fork" in result.reason


def test_a_trusted_checkpoint_larger_than_the_ledger_is_a_rollback():
    clock = FakeClock()
    ledger = grown(seed=3, runs=4, clock=clock)
    ledger.append(items(workload_events(runs=2, seed=9, workspaces=("other",))))
    newest = ledger.checkpoint()
    assert newest is not None
    small = grown(seed=3, runs=4, clock=FakeClock())  # the same history, before it grew
    result = check(small, Trusted(newest.note, "state file s.json"))
    assert not result.ok
    assert result.reason.startswith(f"state file s.json covers {newest.size} entries")
    assert "rollback" in result.reason
