"""Approvals in the ledger: a person's decision as a platform record, expiry, old ledgers, verify."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from domain.approvals import APPROVALS_INDEXED, DECISIONS_FROM, ApprovalConflict, required_from
from domain.errors import NotFoundError
from domain.ledger import Ledger
from domain.records import Record
from domain.stores.memory import MemoryStore
from domain.stores.sqlite import SQLiteStore
from domain.verify import verify_log
from domain.verify_scan import scan_entries
from tests.factories import FakeClock, event, items, make_ledger

START = {"workflow": "w", "mode": "execute", "risk_tier": "low"}


def requested(run: str, seq: int, aid: str, **extra: Any) -> dict[str, Any]:
    return event(run, seq, "approval.requested", {"approval_id": aid, "summary": "s", "risk": "high", **extra})


def decided(run: str, seq: int, aid: str, decision: str = "approved", by: str = "pat") -> dict[str, Any]:
    return event(run, seq, "approval.decided", {"approval_id": aid, "decision": decision, "by": by})


def decision(ledger: Ledger, aid: str, run: str = "r1", value: str = "approved", by: str = "pat") -> int:
    rec = Record("approval.decision", "acme", "2026-01-01T00:10:00Z", {"key_id": "k"},
                 {"approval_id": aid, "run_id": run, "decision": value, "by": by})
    return ledger.append_records([rec])[0]


def verify(ledger: Ledger, approvals_from: int | None, **kw: Any) -> Any:
    store = ledger.store
    return verify_log(store.stored_entries(), [c.note for c in store.checkpoints()], [ledger.signer.vkey],
                      approvals_from=approvals_from, **kw)


def test_an_approval_expires_after_its_timeout_and_then_cannot_be_decided() -> None:
    clock = FakeClock()
    ledger = make_ledger(store=MemoryStore(), clock=clock, approval_decisions="person")
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a", timeout_s=30)]))
    row = ledger.store.approval("acme", "a")
    assert row is not None and row.expires_at == clock() + 30 and row.status(clock()) == "pending"
    clock.advance(30)
    assert ledger.store.approval("acme", "a").status(clock()) == "expired"
    assert ledger.store.approval_page("acme", decided=False, now=clock()) == []
    with pytest.raises(ApprovalConflict, match=r"expired undecided \(its timeout passed\)"):
        decision(ledger, "a")


def test_a_run_that_ends_undecided_expires_its_approvals_and_a_decided_one_stays_decided() -> None:
    ledger = make_ledger(store=MemoryStore(), approval_decisions="person")
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "open"),
                         requested("r1", 2, "done")]))
    decision(ledger, "done")
    report = ledger.append(items([decided("r1", 3, "done"), event("r1", 4, "run.completed", {"outcome": "failed"})]))
    assert report.accepted == 2
    assert ledger.store.approval("acme", "open").closed
    assert ledger.store.approval("acme", "done").status(0) == "approved"
    with pytest.raises(ApprovalConflict, match="its run ended"):
        decision(ledger, "open")


def test_a_decision_must_name_an_approval_of_its_workspace_and_the_run_it_belongs_to() -> None:
    ledger = make_ledger(store=MemoryStore(), approval_decisions="person")
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a")]))
    with pytest.raises(NotFoundError, match="no approval 'b'"):
        decision(ledger, "b")
    with pytest.raises(ApprovalConflict, match="belongs to run 'r1', not 'r2'"):
        decision(ledger, "a", run="r2")
    size = ledger.store.size()
    decision(ledger, "a", value="rejected")
    with pytest.raises(ApprovalConflict, match="already decided: rejected by pat"):
        decision(ledger, "a")
    assert ledger.store.size() == size + 1  # the refused decisions wrote nothing


@pytest.mark.parametrize(("made", "claimed", "why"), [
    (("approved", "pat"), ("rejected", "pat"), "was approved by 'pat', not rejected"),
    (("approved", "pat"), ("approved", "eve"), "says by 'eve', but 'pat' decided it"),
])
def test_an_approval_decided_that_does_not_repeat_the_persons_decision_is_quarantined(made, claimed, why) -> None:
    ledger = make_ledger(store=MemoryStore(), approval_decisions="person")
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a")]))
    decision(ledger, "a", value=made[0], by=made[1])
    report = ledger.append(items([decided("r1", 2, "a", *claimed)]))
    assert report.results[0].status == "quarantined" and why in report.results[0].reason


def test_a_ledger_of_agent_made_decisions_keeps_them_and_verify_names_the_first_unbacked_one() -> None:
    ledger = make_ledger(store=MemoryStore(), approval_decisions="agent")  # as before decisions were required
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a"), decided("r1", 2, "a"),
                         event("r2", 0, "run.started", START), requested("r2", 1, "a")]))
    assert ledger.store.approval("acme", "a").decided_by == "pat"  # the agent's own decision, first run
    ledger.checkpoint()
    assert ledger.store.get_meta(DECISIONS_FROM) is None
    assert verify(ledger, None).ok
    for kw in ({}, {"workers": 2, "chunk_bits": 1}):
        result = verify(ledger, 0, **kw)
        assert not result.ok and result.position == 2, result
        assert "approval.decided of approval 'a' in run 'r1' (approved by 'pat') is not backed" in result.reason
    assert verify_log(ledger.store.raw_entries(), [c.note for c in ledger.store.checkpoints()],
                      [ledger.signer.vkey], approvals_from=0).position == 2  # bytes alone, too


def test_verify_finds_a_decided_event_whose_recorded_decision_names_another_person(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "ledger.db", approval_decisions="person")
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a")]))
    decision(ledger, "a", by="pat")
    assert ledger.append(items([decided("r1", 2, "a", by="pat")])).accepted == 1
    ledger.checkpoint()
    assert verify(ledger, 0).ok
    # an older version's ledger could hold a decided event that repeats nobody: verify says so
    other = make_ledger(tmp_path / "other.db", approval_decisions="agent")
    other.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a")]))
    decision(other, "a", by="pat")
    assert other.append(items([decided("r1", 2, "a", by="eve")])).accepted == 1
    other.checkpoint()
    result = verify(other, 0)
    assert not result.ok and result.position == 3
    assert "the recorded decision is approved by 'pat' for run 'r1'" in result.reason


def test_an_old_ledger_is_indexed_on_first_open_and_verifies_with_decisions_required_from_then_on(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    old = make_ledger(path, approval_decisions="agent")  # as a console used to: the decision written into the run
    old.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a"), decided("r1", 2, "a"),
                      requested("r1", 3, "b"), event("r2", 0, "run.started", START), requested("r2", 1, "c"),
                      event("r2", 2, "run.completed", {"outcome": "escalated"})]))
    old.checkpoint()
    old.store.close()
    with sqlite3.connect(path) as c:  # a store written before the approvals index existed
        c.execute("DELETE FROM approvals")
        c.execute("DELETE FROM meta WHERE key = ?", (APPROVALS_INDEXED,))
    store = SQLiteStore(path)
    ledger = make_ledger(store=store, approval_decisions="person")
    size = store.size()
    assert store.get_meta(DECISIONS_FROM) == str(size) and store.get_meta(APPROVALS_INDEXED) == str(size)
    assert [(r.approval_id, r.status(0), r.decided_by) for r in
            (store.approval("acme", x) for x in "abc")] == [("a", "approved", "pat"), ("b", "pending", None),
                                                           ("c", "expired", None)]
    forged = ledger.append(items([decided("r1", 4, "b")]))
    assert forged.results[0].status == "quarantined"
    decision(ledger, "b")
    assert ledger.append(items([decided("r1", 4, "b")])).accepted == 1
    ledger.checkpoint()
    assert verify(ledger, required_from(store.get_meta(DECISIONS_FROM))).ok
    assert not verify(ledger, 0).ok  # the console-written decision before the change is not backed
    reopened = make_ledger(store=store, approval_decisions="agent")  # a ledger that required decisions still does
    again = reopened.append(items([event("r3", 0, "run.started", START), requested("r3", 1, "a")]))
    assert again.results[1].reason.startswith("rule: approval_id 'a' is already used in workspace 'acme'")


def test_the_scan_hands_the_parent_only_approval_decided_events_and_decision_records() -> None:
    ledger = make_ledger(store=MemoryStore(), approval_decisions="person")
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a"),
                         event("r1", 2, "tool.called", {"call_id": "t", "tool": "x", "args": {}, "status": "ok",
                                                        "latency_ms": 1, "side_effect": "none"})]))
    decision(ledger, "a")
    ledger.append(items([decided("r1", 3, "a")]))
    rows = list(ledger.store.raw_entries())
    scan = scan_entries(0, [data for _, data in rows], ledger.config.origin, [], typed=True)
    assert scan.error is None and scan.count == len(rows) == 5
    assert scan.approvals == [(3, "decision", "acme", "a", "r1", "approved", "pat", None),
                              (4, "decided", "acme", "a", "r1", "approved", "pat", None)]


def test_only_approval_events_read_the_approvals_index_when_appended(monkeypatch: pytest.MonkeyPatch) -> None:
    from domain.stores.memory import MemoryTx

    reads: list[Any] = []
    real = MemoryTx.approvals
    monkeypatch.setattr(MemoryTx, "approvals", lambda self, keys: reads.append(keys) or real(self, keys))
    ledger = make_ledger(store=MemoryStore(), approval_decisions="person")
    tool = {"call_id": "t", "tool": "x", "args": {}, "status": "ok", "latency_ms": 1, "side_effect": "none"}
    plain = [event("r1", 0, "run.started", START), *(event("r1", n, "tool.called", tool) for n in range(1, 50)),
             event("r1", 50, "run.completed", {"outcome": "succeeded"})]
    assert ledger.append(items(plain)).accepted == 51
    assert reads == []  # a run without approvals never touches the index
    ledger.append(items([event("r2", 0, "run.started", START), requested("r2", 1, "a"),
                         event("r2", 2, "tool.called", tool)]))
    assert reads == [[("acme", "a")]]


def test_under_the_default_settings_an_agents_decision_that_no_person_made_is_refused() -> None:
    ledger = make_ledger(store=MemoryStore())  # LedgerConfig's default: approval_decisions="person"
    assert ledger.config.approval_decisions == "person"
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a")]))
    report = ledger.append(items([decided("r1", 2, "a", by="alice")]))
    assert report.results[0].status == "quarantined"
    assert report.results[0].reason == (
        "rule: approval.decided names approval 'a', which no person decided through the platform "
        "(wait for GET /v1/approvals/{approval_id} to answer approved or rejected)")
    assert ledger.store.approval("acme", "a").status(0) == "pending"  # still the person's to decide
    decision(ledger, "a", by="alice")
    assert ledger.append(items([decided("r1", 2, "a", by="alice")])).accepted == 1


def _original(ledger: Ledger, value: str = "approved") -> None:
    """Run r1 asks approvals 'r1/a' and 'r1/b'; pat decides 'r1/a'; r1 repeats that decision and
    completes ('r1/b' expires undecided)."""
    ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "r1/a"),
                         requested("r1", 2, "r1/b")]))
    decision(ledger, "r1/a", value=value)
    assert ledger.append(items([decided("r1", 3, "r1/a", value),
                                event("r1", 4, "run.completed", {"outcome": "succeeded"})])).accepted == 2


def _replay(run: str = "rp", of: str | None = "r1", source: str | None = "r1/a", value: str = "approved",
            by: str = "pat") -> list[dict[str, Any]]:
    """A run replaying ``of`` that repeats the decision on approval ``source`` for its own request."""
    start = {**START, "replay_of": of} if of is not None else START
    said = {"approval_id": f"{run}/a", "decision": value, "by": by}
    if source is not None:
        said["replayed_from"] = source
    return [event(run, 0, "run.started", start), requested(run, 1, f"{run}/a"),
            event(run, 2, "approval.decided", said), event(run, 3, "run.completed", {"outcome": "succeeded"})]


def test_a_replay_repeats_the_persons_decision_of_the_run_it_replays_and_never_enters_the_queue() -> None:
    clock = FakeClock()
    ledger = make_ledger(store=MemoryStore(), clock=clock)
    _original(ledger)
    replay = _replay()
    assert ledger.append(items(replay[:2])).accepted == 2
    assert ledger.store.approval("acme", "rp/a") is None  # a replay asks no person: nothing to decide
    assert ledger.store.approval_page("acme", decided=False, now=clock()) == []
    with pytest.raises(NotFoundError):
        decision(ledger, "rp/a", run="rp")
    report = ledger.append(items(replay[2:]))
    assert report.accepted == 2, report.results
    assert [r.approval_id for r in ledger.store.approval_page("acme", decided=True, now=clock())] == ["r1/a"]
    ledger.checkpoint()
    for kw in ({}, {"workers": 2, "chunk_bits": 1}):
        result = verify(ledger, required_from(ledger.store.get_meta(DECISIONS_FROM)), **kw)
        assert result.ok, result.reason


@pytest.mark.parametrize(("replay", "why"), [
    (_replay(source=None), "in run 'rp', a replay of 'r1', names no replayed_from: a replay never asks a person"),
    (_replay(value="rejected"), "replays approval 'r1/a' as rejected by 'pat', but it was approved by 'pat'"),
    (_replay(by="eve"), "replays approval 'r1/a' as approved by 'eve', but it was approved by 'pat'"),
    (_replay(source="r2/a"), "replays approval 'r2/a', which run 'r1' (the run that run 'rp' replays) did not "
                             "request"),
    (_replay(of="r2"), "replays approval 'r1/a', which run 'r2' (the run that run 'rp' replays) did not request"),
    (_replay(source="beta/a"), "replays approval 'beta/a', which run 'r1' (the run that run 'rp' replays) did not"),
    (_replay(source="r1/b"), "replays approval 'r1/b' of run 'r1', which no person decided through the platform"),
    (_replay(of=None), "names replayed_from 'r1/a', but run 'rp' is not a replay (its run.started has no replay_of)"),
], ids=["no-replayed_from", "other-decision", "other-person", "other-runs-approval", "other-run-replayed",
        "other-workspaces-approval", "undecided", "not-a-replay"])
def test_a_replays_decision_that_repeats_no_persons_decision_in_the_replayed_run_is_refused(replay, why) -> None:
    ledger = make_ledger(store=MemoryStore())
    _original(ledger)
    ledger.append(items([event("r2", 0, "run.started", START), requested("r2", 1, "r2/a"),
                         event("r1", 0, "run.started", START, workspace="beta"),
                         event("r1", 1, "approval.requested", {"approval_id": "beta/a", "summary": "s", "risk": "low"},
                               workspace="beta")]))
    decision(ledger, "r2/a", run="r2")
    ledger.append_records([Record("approval.decision", "beta", "2026-01-01T00:10:00Z", {"key_id": "k"},
                                  {"approval_id": "beta/a", "run_id": "r1", "decision": "approved", "by": "pat"})])
    size = ledger.store.size()
    report = ledger.append(items(replay[:3]))
    assert [r.status for r in report.results] == ["accepted", "accepted", "quarantined"]
    assert why in report.results[2].reason, report.results[2].reason
    assert report.results[2].reason.startswith("rule: approval.decided")
    assert ledger.store.size() == size + 2


def test_verify_checks_a_replays_decision_against_the_persons_decision_in_the_replayed_run(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "ledger.db", approval_decisions="agent")  # accepts what it is given
    _original(ledger)
    ledger.append(items([*_replay("ok"), *_replay("forged", by="eve"), *_replay("unnamed", source=None),
                         *_replay("plain", of=None)]))
    ledger.checkpoint()
    result = verify(ledger, 0)
    assert not result.ok and result.reason == (
        "approval.decided of approval 'forged/a' in run 'forged' (approved by 'eve') is not backed: "
        "the recorded decision is approved by 'pat' for run 'r1'")
    assert verify(ledger, result.position + 1).reason == (
        "approval.decided of approval 'unnamed/a' in run 'unnamed' (approved by 'pat') is not backed: "
        "run 'unnamed' replays 'r1' and a replay's decision must name replayed_from")
    later = verify(ledger, verify(ledger, result.position + 1).position + 1)
    assert later.reason == ("approval.decided of approval 'plain/a' in run 'plain' (approved by 'pat') is not "
                            "backed: it names replayed_from 'r1/a' but run 'plain' is not a replay")
    honest = make_ledger(tmp_path / "honest.db", approval_decisions="agent")
    _original(honest)
    honest.append(items(_replay("ok")))
    honest.checkpoint()
    assert verify(honest, 0).ok


def test_approval_rows_get_their_entries_ledger_indexes_when_the_batch_is_sequenced() -> None:
    """Outcomes are decided before a batch has ledger positions: an approval requested (or a
    decision recorded) in a batch is noted with a stand-in index, and its row gets the index its
    entry was given; a second request of the same id in the same batch is refused as such."""
    ledger = make_ledger(store=MemoryStore(), approval_decisions="person")
    ledger.append(items([event("r0", 0, "run.started", START)]))
    report = ledger.append(items([event("r1", 0, "run.started", START), requested("r1", 1, "a"),
                                  event("r2", 0, "run.started", START), requested("r2", 1, "a")]))
    assert [o.status for o in report.results] == ["accepted", "accepted", "accepted", "quarantined"]
    assert "(earlier in the same batch)" in (report.results[3].reason or "")
    assert [o.index for o in report.results] == [1, 2, 3, None]
    at = decision(ledger, "a")
    row = ledger.store.approval("acme", "a")
    assert row is not None and (row.requested_index, row.decision_index) == (2, at) == (2, 4)
    again = ledger.append(items([event("r3", 0, "run.started", START), requested("r3", 1, "a")]))
    assert "(ledger index 2)" in (again.results[1].reason or "")
