"""The write path: accepted once, duplicates absorbed, conflicts and breaches quarantined."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from domain.ledger import Ledger
from domain.ports import Incoming, Source
from tachograph.contract.canonical import dumps
from tests.factories import FakeClock, event, items, make_ledger, workload_events
from tests.factories import verify_ledger as verify

MODEL_CALL = {
    "call_id": "m1", "provider": "openai", "model": "gpt-4.1", "input_tokens": 10,
    "output_tokens": 5, "cost_usd": "0.01", "latency_ms": 120,
}




def stored_event_ids(ledger: Ledger) -> list[str]:
    return [e.event_id for e in ledger.store.entries()]


def test_every_valid_event_is_stored_once_in_arrival_order(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    events = workload_events(runs=25)
    report = ledger.append(items(events))
    assert report.accepted == len(events) and report.quarantined == 0
    assert stored_event_ids(ledger) == [e["event_id"] for e in events]
    ledger.checkpoint()
    assert verify(ledger).ok


def test_redelivered_events_are_absorbed_as_duplicates(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    events = workload_events(runs=5)
    ledger.append(items(events))
    again = ledger.append(items(events[:10]) + items(events[:3]))
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 13, 0)
    assert ledger.store.size() == len(events)


def test_a_duplicate_inside_one_batch_is_absorbed(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    ev = event()
    report = ledger.append(items([ev, ev]))
    assert [o.status for o in report.results] == ["accepted", "duplicate"]


def test_same_event_id_with_different_content_is_a_quarantined_conflict(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items([event()]))
    changed = event(data={"workflow": "other", "mode": "execute", "risk_tier": "low"})
    report = ledger.append(items([changed]))
    assert report.quarantined == 1
    assert "conflict" in report.results[0].reason
    q = ledger.store.quarantine()
    assert q[0].raw == dumps(changed) and q[0].source.line == 1


def test_same_seq_with_a_different_event_id_is_a_conflict(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items([event()]))
    report = ledger.append(items([event(event_id="other-id")]))
    assert report.results[0].status == "quarantined"
    assert "seq 0" in report.results[0].reason


def test_a_bad_neighbour_does_not_lose_valid_events(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    good = [event(seq=0), event(seq=1, etype="model.called", data=MODEL_CALL)]
    batch = [
        items([good[0]])[0],
        Incoming(b"\xff not utf8", Source(kind="file", name="x", line=2)),
        Incoming(b"{", Source(kind="file", name="x", line=3)),
        items([good[1]])[0],
    ]
    report = ledger.append(batch)
    assert [o.status for o in report.results] == ["accepted", "quarantined", "quarantined", "accepted"]
    reasons = [q.reason for q in ledger.store.quarantine()]
    assert reasons[0].startswith("contract: not UTF-8") and "not JSON" in reasons[1]
    assert ledger.store.quarantine_count() == 2


def test_an_event_ahead_of_a_gap_is_held_and_released_when_the_gap_fills(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    e0, e1, e2 = event(seq=0), event(seq=1, etype="model.called", data=MODEL_CALL), event(
        seq=2, etype="run.completed", data={"outcome": "succeeded"}
    )
    assert ledger.append(items([e0, e2])).held == 1
    assert ledger.store.size() == 1
    report = ledger.append(items([e1]))
    assert report.accepted == 2
    assert [e.seq for e in ledger.store.run_entries("acme", "r1")] == [0, 1, 2]


def test_a_gap_that_never_fills_is_quarantined_after_the_timeout(tmp_path):
    clock = FakeClock()
    ledger = make_ledger(tmp_path / "l.db", clock=clock, held_timeout_s=30)
    ledger.append(items([event(seq=0), event(seq=5, etype="model.called", data=MODEL_CALL)]))
    assert ledger.expire_held().quarantined == 0
    clock.advance(31)
    report = ledger.expire_held()
    assert report.quarantined == 1
    assert ledger.store.quarantine()[0].reason.startswith("gap:")


def test_the_hold_buffer_is_bounded(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", max_held=2)
    later = [event(seq=s, etype="model.called", data={**MODEL_CALL, "call_id": f"m{s}"}) for s in (3, 4, 5)]
    report = ledger.append(items([event(seq=0), *later]))
    assert [o.status for o in report.results] == ["accepted", "held", "held", "quarantined"]
    assert "hold buffer is full" in report.results[-1].reason


def test_one_workspace_filling_its_share_of_the_hold_buffer_does_not_quarantine_anothers_gap(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", max_held=6, max_held_per_workspace=3)
    flood = [event(f"a{n}", 5, "model.called", MODEL_CALL, workspace="alpha") for n in range(8)]
    report = ledger.append(items(flood))
    assert [o.status for o in report.results] == ["held"] * 3 + ["quarantined"] * 5
    assert "workspace 'alpha' already holds 3 events" in report.results[3].reason
    more = event("a9", 5, "model.called", MODEL_CALL, workspace="alpha")
    assert ledger.append(items([flood[0], more])).quarantined == 1  # counted from the store
    # beta's ordinary out-of-order event is held, then accepted when its gap fills
    b0, b1, b2 = (event("b", s, t, d, workspace="beta") for s, t, d in (
        (0, "run.started", None), (1, "model.called", MODEL_CALL),
        (2, "run.completed", {"outcome": "succeeded"})))
    assert [o.status for o in ledger.append(items([b0, b2])).results] == ["accepted", "held"]
    assert ledger.append(items([b1])).accepted == 2
    assert [e.seq for e in ledger.store.run_entries("beta", "b")] == [0, 1, 2]


def test_a_workspace_share_counts_what_the_batch_released(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", max_held_per_workspace=1)
    e0, e1, e2 = event(seq=0), event(seq=1, etype="model.called", data=MODEL_CALL), event(
        seq=2, etype="run.completed", data={"outcome": "succeeded"})
    assert ledger.append(items([e0, e2])).held == 1
    later = event("r2", 3, "model.called", MODEL_CALL)
    # e1 releases e2 from the buffer, so r2's event fits in acme's share of one
    report = ledger.append(items([e1, event("r2", 0), later]))
    assert [o.status for o in report.results] == ["accepted", "accepted", "held"]


def test_beyond_its_budget_a_workspace_quarantine_keeps_a_preview_size_and_digest(tmp_path):
    import hashlib

    from domain.ledger import QUARANTINE_PREVIEW_BYTES

    ledger = make_ledger(tmp_path / "l.db", quarantine_bytes_per_workspace=10_000,
                         quarantine_bytes_unattributed=3_000)
    junk = [b'{"workspace": "alpha", "pad": "' + bytes([65 + n]) * 4_000 + b'"}' for n in range(4)]
    report = ledger.append([Incoming(j, Source(kind="kafka", topic="t", partition=0, offset=n))
                            for n, j in enumerate(junk)])
    assert report.quarantined == 4
    rows = ledger.store.quarantine()
    assert [r.workspace for r in rows] == ["alpha"] * 4  # the workspace the item names
    assert [r.kept for r in rows] == [len(junk[0]), len(junk[1]), QUARANTINE_PREVIEW_BYTES,
                                      QUARANTINE_PREVIEW_BYTES]
    assert all(r.raw_size == len(j) and r.raw_sha256 == hashlib.sha256(j).digest()
               for r, j in zip(rows, junk, strict=True))  # the fact and the digest stay
    assert ledger.store.quarantined(rows[3].id).raw == junk[3][:QUARANTINE_PREVIEW_BYTES]
    # another workspace's and the unattributed bucket have budgets of their own
    other = ledger.append([
        *items([{"workspace": "beta", "seq": "x"}]),
        Incoming(b"\xff" * 2_500, Source(kind="kafka")), Incoming(b"\xfe" * 2_500, Source(kind="kafka")),
        Incoming(b"not json", Source(kind="http"), "gamma"),
    ])
    assert other.quarantined == 4
    beta, first, second, gamma = ledger.store.quarantine(after_id=rows[-1].id)
    assert (beta.workspace, beta.truncated, gamma.workspace, gamma.truncated) == ("beta", False, "gamma", False)
    assert (first.workspace, first.kept, second.workspace, second.kept) == (None, 2_500, None, 1024)
    usage = ledger.store.quarantine_usage()
    assert (usage["alpha"].items, usage["alpha"].truncated, usage[None].truncated) == (4, 2, 1)


def test_run_rule_breaches_are_quarantined_with_the_rule(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    report = ledger.append(
        items(
            [
                event(seq=0),
                event(seq=1, etype="run.completed", data={"outcome": "succeeded"}),
                event(seq=2, etype="model.called", data=MODEL_CALL),
            ]
        )
    )
    assert report.results[2].status == "quarantined"
    assert "after run.completed" in report.results[2].reason


def test_a_batch_is_one_transaction_and_a_few_signatures(tmp_path, monkeypatch):
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=4000)
    calls = {"tx": 0}
    real_tx = ledger.store.transaction

    def counting_tx():
        calls["tx"] += 1
        return real_tx()

    monkeypatch.setattr(ledger.store, "transaction", counting_tx)
    events = workload_events(runs=800)
    assert len(events) >= 10_000
    report = ledger.append(items(events[:10_000]))
    assert report.accepted == 10_000
    assert calls == {"tx": 1}
    assert [c.size for c in ledger.store.checkpoints()] == [10_000]  # one signature


def test_checkpoints_are_signed_every_n_entries_and_every_t_seconds(tmp_path):
    clock = FakeClock()
    ledger = make_ledger(tmp_path / "l.db", clock=clock, checkpoint_every=100, checkpoint_interval_s=10)
    events = workload_events(runs=30)
    ledger.append(items(events[:150]))
    assert [c.size for c in ledger.store.checkpoints()] == [150]
    ledger.append(items(events[150:160]))
    assert len(ledger.store.checkpoints()) == 1
    clock.advance(11)
    ledger.append(items(events[160:161]))
    assert [c.size for c in ledger.store.checkpoints()] == [150, 161]


def test_a_failed_transaction_stores_nothing(tmp_path, monkeypatch):
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items([event()]))
    from domain.stores import sqlite as sqlite_store

    def broken(self, rows):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_store.SQLiteTx, "add_quarantine", broken)
    with pytest.raises(Exception, match="disk I/O error"):
        ledger.append([*items([event("r2"), event("r1")]), Incoming(b"{", Source("file"))])
    assert ledger.store.size() == 1
    monkeypatch.undo()
    report = ledger.append(items([event("r2")]))
    assert report.accepted == 1 and ledger.store.size() == 2


def test_the_store_refuses_a_different_log(tmp_path):
    make_ledger(tmp_path / "l.db")
    with pytest.raises(Exception, match="belongs to log"):
        make_ledger(tmp_path / "l.db", origin="other.example/log")


def test_inclusion_and_consistency_proofs_verify_against_signed_roots(tmp_path):
    from domain import merkle

    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items(workload_events(runs=10)))
    size = ledger.store.size()
    root = ledger.root(size)
    for entry in ledger.store.entries():
        merkle.verify_inclusion(entry.leaf_hash, entry.index, size, ledger.inclusion_proof(entry.index, size), root)
    for m in (1, 7, size // 2, size):
        merkle.verify_consistency(m, size, ledger.root(m), root, ledger.consistency_proof(m, size))


def test_an_event_id_reused_by_another_run_is_a_conflict_and_its_batch_still_lands(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items([event("r1")]))
    thief = event("r2", event_id="r1-0")  # new run, new seq, but a stored event_id
    report = ledger.append(items([event("r3"), thief, event("r4")]))
    assert [o.status for o in report.results] == ["accepted", "quarantined", "accepted"]
    assert "event_id 'r1-0' is already stored" in report.results[1].reason
    assert sorted(e.run_id for e in ledger.store.entries()) == ["r1", "r3", "r4"]


def test_an_event_id_reused_by_a_run_s_next_event_later_in_the_batch_is_a_conflict(tmp_path):
    """The second event of a run in one batch is not looked up first; the store's index catches it."""
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items([event("r1")]))
    policy = {"policy": "p", "action": "a", "decision": "allow", "reason": "ok"}
    thief = event("r2", 1, "policy.evaluated", policy, event_id="r1-0")
    report = ledger.append(items([event("r2"), thief, event("r3")]))
    assert [o.status for o in report.results] == ["accepted", "quarantined", "accepted"]
    assert "event_id 'r1-0' is already stored" in report.results[1].reason
    assert sorted(e.run_id for e in ledger.store.entries()) == ["r1", "r2", "r3"]


def test_events_that_follow_their_run_in_order_are_not_looked_up_by_event_id(tmp_path, monkeypatch):
    from domain.stores.sqlite import SQLiteTx

    looked_up: list[tuple[str, str]] = []
    real = SQLiteTx.event_hashes
    monkeypatch.setattr(SQLiteTx, "event_hashes", lambda tx, ids: looked_up.extend(ids) or real(tx, ids))
    ledger = make_ledger(tmp_path / "l.db")
    events = workload_events(runs=20)  # runs interleaved, several events of a run per batch
    half = len(events) // 2
    first, second = ledger.append(items(events[:half])), ledger.append(items(events[half:]))
    assert first.accepted + second.accepted == len(events) > 100
    assert looked_up == []
    again = ledger.append(items(events[:10]))  # sent again: looked up, so found as duplicates
    assert again.duplicates == 10 and len(looked_up) == 10


@pytest.mark.parametrize(
    "source",
    [
        Source(kind="kafka", topic="agent-events", partition=3, offset=12345),
        Source(kind="file", name='we"ird.jsonl', line=7),
        Source(kind="http", name="acme/k1", line=0),
        Source(kind="kafka", topic="t", partition=0, offset=0, name="x"),
    ],
)
def test_source_metadata_is_canonical_json_whatever_path_builds_it(tmp_path, source):
    import orjson

    from domain.ledger import _Batch

    assert _Batch.source_json(source) == dumps(source.to_json())
    assert orjson.loads(_Batch.source_json(source)) == source.to_json()


def test_the_event_hash_is_worked_out_from_the_stored_bytes_not_a_column(tmp_path):
    from domain.ports import event_hash_of

    canonical = b'{"data":{"args":{"index":3,"note":"a,\\"index\\":9"}},"event_id":"e1"}'
    data = b'{"event":' + canonical + b',"index":7,"kind":"event","log":"x","prev":null}'
    assert event_hash_of(data) == hashlib.sha256(canonical).digest()
    ledger = make_ledger(tmp_path / "l.db")
    events = workload_events(runs=2)
    ledger.append(items(events))
    with sqlite3.connect(ledger.store.path) as c:
        assert c.execute("SELECT count(*) FROM entries WHERE event_hash IS NOT NULL").fetchone() == (0,)
    assert ledger.append(items(events)).duplicates == len(events)  # looked up, hashed from the bytes
