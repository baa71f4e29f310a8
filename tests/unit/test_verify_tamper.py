"""The verifier detects every kind of tampering named in the design (invariant 4)."""

from __future__ import annotations

import shutil
import sqlite3

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import merkle
from domain.checkpoint import Checkpoint, sign_checkpoint
from domain.ledger import Ledger
from domain.verify import verify_log
from tests.factories import FakeClock, items, make_ledger, signer, workload_events


def build(tmp_path, runs=12, name="l.db", **kw) -> Ledger:
    ledger = make_ledger(tmp_path / name, checkpoint_every=50, **kw)
    events = workload_events(runs=runs)
    for i in range(0, len(events), 40):
        ledger.append(items(events[i : i + 40]))
    ledger.checkpoint()
    return ledger


def check(ledger: Ledger, keys=None, **kw):
    """Verify in one pass, and again in small chunks over two processes: same verdict."""
    args = ([c.note for c in ledger.store.checkpoints()], keys or [signer().vkey])
    one = verify_log(ledger.store.stored_entries(), *args, origin=None, **kw)
    chunked = verify_log(ledger.store.stored_entries(), *args, origin=None, chunk_bits=3, workers=2, **kw)
    ranged = verify_log(ledger.store.range_reader(), *args, origin=None, chunk_bits=4, workers=2, **kw)
    assert (one.ok, one.position, one.reason, one.root) == (
        chunked.ok, chunked.position, chunked.reason, chunked.root
    )
    assert (one.ok, one.position, one.root) == (ranged.ok, ranged.position, ranged.root), ranged
    assert one.ok or ranged.reason
    return one


def db(ledger: Ledger) -> sqlite3.Connection:
    return sqlite3.connect(ledger.store.path, isolation_level=None)


def rewrite(ledger: Ledger, index: int, transform) -> None:
    """Edit an entry's bytes and keep its leaf column in step, as a careful tamperer would."""
    c = db(ledger)
    (data,) = c.execute("SELECT data FROM entries WHERE idx = ?", (index,)).fetchone()
    new = transform(bytes(data))
    c.execute("UPDATE entries SET data = ?, leaf = ? WHERE idx = ?", (new, merkle.leaf_hash(new), index))


def test_an_untouched_ledger_verifies(tmp_path):
    result = check(build(tmp_path))
    assert result.ok and result.entries > 100 and result.checkpoints >= 3


def test_an_edited_payload_is_detected(tmp_path):
    ledger = build(tmp_path)
    rewrite(ledger, 30, lambda d: d.replace(b'"input_tokens":', b'"input_tokens":1', 1) if b'"input_tokens":' in d else d.replace(b'"seq":', b'"seq": ', 1))
    result = check(ledger)
    assert not result.ok and result.position is not None and result.position <= 49


def test_edited_metadata_is_detected(tmp_path):
    ledger = build(tmp_path)
    rewrite(ledger, 10, lambda d: d.replace(b'"kind":"file"', b'"kind":"http"'))
    result = check(ledger)
    # caught by the run chain of the next entry of that run, or by the covering checkpoint
    assert not result.ok and 10 <= result.position <= 49
    assert "chain broken" in result.reason or "root hash does not match" in result.reason


def test_a_deleted_entry_is_detected(tmp_path):
    ledger = build(tmp_path)
    db(ledger).execute("DELETE FROM entries WHERE idx = 20")
    result = check(ledger)
    assert not result.ok and result.position == 20 and "missing or out of order" in result.reason


def test_a_deleted_entry_with_renumbered_indices_is_detected(tmp_path):
    ledger = build(tmp_path)
    c = db(ledger)
    rows = c.execute("SELECT idx, data FROM entries WHERE idx > 20 ORDER BY idx").fetchall()
    c.execute("DELETE FROM entries WHERE idx >= 20")
    for idx, data in rows:
        d = orjson.loads(data)
        d["index"] = idx - 1
        c.execute("INSERT INTO entries (idx, data, leaf, kind) VALUES (?, ?, x'00', 'event')",
                  (idx - 1, orjson.dumps(d, option=orjson.OPT_SORT_KEYS)))
    result = check(ledger)
    assert not result.ok and result.position is not None and result.position >= 20


def test_an_inserted_entry_is_detected(tmp_path):
    ledger = build(tmp_path)
    c = db(ledger)
    c.execute("UPDATE entries SET idx = idx + 1000000 WHERE idx >= 15")
    c.execute("UPDATE entries SET idx = idx - 1000000 + 1 WHERE idx >= 1000000")
    (data,) = c.execute("SELECT data FROM entries WHERE idx = 16").fetchone()
    c.execute("INSERT INTO entries (idx, data, leaf, kind) VALUES (15, ?, x'00', 'event')", (data,))
    result = check(ledger)
    assert not result.ok and result.position in (15, 16)


def test_a_duplicated_entry_is_detected(tmp_path):
    ledger = build(tmp_path)
    c = db(ledger)
    (data,) = c.execute("SELECT data FROM entries WHERE idx = 7").fetchone()
    d = orjson.loads(data)
    c.execute("UPDATE entries SET idx = idx + 1000000 WHERE idx >= 8")
    c.execute("UPDATE entries SET idx = idx - 1000000 + 1 WHERE idx >= 1000000")
    d["index"] = 8
    c.execute("INSERT INTO entries (idx, data, leaf, kind) VALUES (8, ?, x'00', 'event')",
              (orjson.dumps(d, option=orjson.OPT_SORT_KEYS),))
    result = check(ledger)
    assert not result.ok and result.position == 8


def test_reordered_entries_are_detected(tmp_path):
    ledger = build(tmp_path)
    c = db(ledger)
    a = c.execute("SELECT data FROM entries WHERE idx = 40").fetchone()[0]
    b = c.execute("SELECT data FROM entries WHERE idx = 41").fetchone()[0]
    c.execute("UPDATE entries SET data = ? WHERE idx = 40", (b,))
    c.execute("UPDATE entries SET data = ? WHERE idx = 41", (a,))
    result = check(ledger)
    assert not result.ok and result.position == 40


def test_a_truncated_tail_is_detected_by_the_checkpoints_that_cover_it(tmp_path):
    ledger = build(tmp_path)
    size = ledger.store.size()
    db(ledger).execute("DELETE FROM entries WHERE idx >= ?", (size - 5,))
    result = check(ledger)
    assert not result.ok and "truncated tail or rollback" in result.reason


def test_a_rollback_to_an_earlier_valid_state_is_detected_with_a_trusted_checkpoint(tmp_path):
    clock = FakeClock()
    ledger = build(tmp_path, clock=clock)
    shutil.copy(ledger.store.path, tmp_path / "earlier.db")
    ledger.append(items(workload_events(runs=3, seed=99)))
    trusted = ledger.checkpoint().note
    earlier = make_ledger(tmp_path / "earlier.db")
    assert check(earlier).ok  # on its own the old copy is a valid ledger...
    result = check(earlier, trusted_checkpoint=trusted)
    assert not result.ok and "rollback" in result.reason  # ...but not the one we were shown


def test_a_trusted_checkpoint_of_the_same_history_passes(tmp_path):
    ledger = build(tmp_path)
    trusted = ledger.store.checkpoints()[1].note
    assert check(ledger, trusted_checkpoint=trusted).ok


def test_an_entry_spliced_from_another_ledger_is_detected(tmp_path):
    ours = build(tmp_path, name="a.db")
    theirs = build(tmp_path, name="b.db", origin="other.example/log", key_seed=2)
    (data,) = db(theirs).execute("SELECT data FROM entries WHERE idx = 12").fetchone()
    db(ours).execute("UPDATE entries SET data = ? WHERE idx = 12", (data,))
    result = check(ours)
    assert not result.ok and result.position == 12 and "another ledger" in result.reason


def test_a_rewrite_re_signed_with_an_untrusted_key_is_detected(tmp_path):
    ledger = build(tmp_path)
    last = ledger.store.size() - 1  # the last entry has no successor in its run chain
    rewrite(ledger, last, lambda d: d.replace(b'"log":', b'"forged":true,"log":'))
    forger = signer(seed=9)
    leaves = [merkle.leaf_hash(d) for _, d in ledger.store.raw_entries()]
    c = db(ledger)
    for cid, size in c.execute("SELECT id, size FROM checkpoints").fetchall():
        note = sign_checkpoint(Checkpoint("test.example/log", size, merkle.root_from_leaf_hashes(leaves[:size])), forger)
        c.execute("UPDATE checkpoints SET note = ? WHERE id = ?", (note, cid))
    assert check(ledger, keys=[forger.vkey]).ok  # self-consistent forgery...
    result = check(ledger)  # ...but not signed by the key we trust
    assert not result.ok and "not signed by a key trusted" in result.reason


def test_a_checkpoint_signed_with_a_retired_key_after_rotation_is_detected(tmp_path):
    ledger = build(tmp_path)
    old = ledger.signer
    ledger.rotate_key(signer(seed=5))
    ledger.append(items(workload_events(runs=4, seed=42, workspaces=("beta",))))
    ledger.checkpoint()
    assert check(ledger, keys=[old.vkey]).ok
    # someone holding the retired key signs a checkpoint of a rewritten history
    size = ledger.store.size()
    rewrite(ledger, size - 1, lambda d: d.replace(b'"log":', b'"forged":true,"log":'))
    leaves = [merkle.leaf_hash(d) for _, d in ledger.store.raw_entries()]
    note = sign_checkpoint(Checkpoint("test.example/log", size, merkle.root_from_leaf_hashes(leaves)), old)
    db(ledger).execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))
    result = check(ledger, keys=[old.vkey])
    assert not result.ok and "not signed by a key trusted for that size" in result.reason


def test_a_forged_key_rotation_is_detected(tmp_path):
    ledger = build(tmp_path)
    ledger.rotate_key(signer(seed=5))
    ledger.checkpoint()
    c = db(ledger)
    (idx, data) = c.execute("SELECT idx, data FROM entries WHERE kind = 'key.rotated'").fetchone()
    d = orjson.loads(data)
    d["rotation"]["new_vkey"] = signer(seed=6).vkey
    c.execute("UPDATE entries SET data = ? WHERE idx = ?", (orjson.dumps(d, option=orjson.OPT_SORT_KEYS), idx))
    result = check(ledger)
    assert not result.ok and result.position == idx


def test_entries_not_yet_covered_by_a_checkpoint_are_reported(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=10_000, checkpoint_interval_s=3600)
    ledger.append(items(workload_events(runs=2)))
    ledger.checkpoint()
    later = ledger.append(items(workload_events(runs=2, seed=8, workspaces=("beta",))))
    assert later.accepted > 0 and later.checkpoint is None
    result = check(ledger)
    assert not result.ok and "not covered by any signed checkpoint" in result.reason
    assert check(ledger, allow_unsigned_tail=True).ok


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("pristine")
    ledger = build(path, runs=4)
    rows = list(ledger.store.raw_entries())
    notes = [c.note for c in ledger.store.checkpoints()]
    return rows, notes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipping_any_bit_of_any_entry_is_detected(pristine, data):
    rows, notes = pristine
    i = data.draw(st.integers(0, len(rows) - 1))
    idx, body = rows[i]
    pos = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(body)
    flipped[pos] ^= 1 << bit
    tampered = [*rows[:i], (idx, bytes(flipped)), *rows[i + 1 :]]
    assert not verify_log(tampered, notes, [signer().vkey]).ok


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipping_any_bit_of_any_checkpoint_is_detected(pristine, data):
    rows, notes = pristine
    i = data.draw(st.integers(0, len(notes) - 1))
    raw = bytearray(notes[i].encode())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    tampered_note = raw.decode("utf-8", errors="replace")
    tampered = [*notes[:i], tampered_note, *notes[i + 1 :]]
    assert not verify_log(rows, tampered, [signer().vkey]).ok


@pytest.mark.parametrize("seq", [b'"1"', b"null", b"1.5"])
def test_a_seq_rewritten_to_a_non_integer_is_a_breach_not_a_crash(tmp_path, seq):
    ledger = build(tmp_path)
    rewrite(ledger, 30, lambda d: d.replace(b'"seq":', b'"seq":' + seq + b',"was":', 1))
    result = check(ledger)
    assert not result.ok and result.position is not None and result.position <= 49


def test_an_entry_rewritten_as_text_by_sql_is_a_breach_in_every_mode(tmp_path):
    ledger = build(tmp_path)
    db(ledger).execute("UPDATE entries SET data = replace(data, 'acme', 'acme') WHERE idx = 12")
    (kind,) = db(ledger).execute("SELECT typeof(data) FROM entries WHERE idx = 12").fetchone()
    assert kind == "text"  # same characters, but no longer the stored bytes' type
    result = check(ledger)  # one pass, chunked, and ranged agree (see check)
    assert result.ok or result.position == 12


def test_an_event_id_used_twice_is_found_by_the_scan_and_by_the_store_alike(tmp_path):
    """A ledger whose bytes hold one event id twice (the run's last entry rewritten, columns
    and leaf kept in step, checkpoints dropped): the one-pass scan collects ids, the range reader
    leaves them to the store's event-id index; both name the later position."""
    ledger = build(tmp_path)
    c = db(ledger)
    first_run = orjson.loads(c.execute("SELECT data FROM entries WHERE idx = 0").fetchone()[0])["event"]
    rows = c.execute("SELECT idx, data FROM entries WHERE kind = 'event' ORDER BY idx").fetchall()
    last_of = {}
    for idx, data in rows:
        last_of[orjson.loads(data)["event"]["run_id"]] = idx
    target = max(i for run, i in last_of.items() if run != first_run["run_id"])
    reused = first_run["event_id"]
    c.execute("DROP INDEX entries_event_id")
    rewrite(ledger, target, lambda d: orjson.dumps(
        {**orjson.loads(d), "event": {**orjson.loads(d)["event"], "event_id": reused}},
        option=orjson.OPT_SORT_KEYS))
    c.execute("UPDATE entries SET event_id = ? WHERE idx = ?", (reused, target))
    c.execute("DELETE FROM checkpoints")
    c.execute("CREATE INDEX entries_event_id ON entries (workspace, event_id)")
    args = ([], [signer().vkey])
    one = verify_log(ledger.store.stored_entries(), *args, allow_unsigned_tail=True)
    ranged = verify_log(ledger.store.range_reader(), *args, allow_unsigned_tail=True,
                        chunk_bits=4, workers=2)
    for result in (one, ranged):
        assert not result.ok and result.position == target
        assert result.reason == f"event_id {reused!r} appears twice"
