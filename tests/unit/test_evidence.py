"""Evidence bundles verify offline, and any tampering with one is caught."""

from __future__ import annotations

import base64
import copy
import sqlite3

import orjson
import pytest

from domain.errors import VerificationError
from domain.evidence import build_evidence, verify_evidence
from tests.factories import items, make_ledger, signer, workload_events


@pytest.fixture
def bundle(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=25)
    ledger.append(items(workload_events(runs=10)))
    return build_evidence(ledger, "acme", "run-0000003")


def test_a_bundle_verifies_with_the_ledger_key(bundle):
    result = verify_evidence(bundle, [signer().vkey])
    assert result.ok, result.reason
    assert result.entries == len(bundle["entries"]) and result.complete and result.whole
    assert result.outcome in {"succeeded", "failed", "escalated", "cancelled"}


def test_a_bundle_is_plain_json_with_the_documented_members(bundle):
    again = orjson.loads(orjson.dumps(bundle))
    assert set(again) == {
        "format", "run_id", "workspace", "checkpoint", "run_head", "verifier_keys", "entries"
    }
    entry = orjson.loads(base64.b64decode(again["entries"][0]["bytes"]))
    assert entry["event"]["run_id"] == "run-0000003" and entry["event"]["seq"] == 0


def test_a_bundle_signed_by_an_untrusted_key_fails(bundle):
    result = verify_evidence(bundle, [signer(seed=8).vkey])
    assert not result.ok and "checkpoint does not verify" in result.reason


@pytest.mark.parametrize(
    "what", ["bytes", "proof", "index", "drop-middle", "swap", "other-run", "drop-last", "add-last", "reverse"]
)
def test_a_tampered_bundle_fails(bundle, what):
    b = copy.deepcopy(bundle)
    entries = b["entries"]
    if what == "bytes":
        raw = bytearray(base64.b64decode(entries[1]["bytes"]))
        raw[len(raw) // 2] ^= 1
        entries[1]["bytes"] = base64.b64encode(bytes(raw)).decode()
    elif what == "proof":
        h = bytearray(base64.b64decode(entries[0]["proof"][0]))
        h[0] ^= 1
        entries[0]["proof"][0] = base64.b64encode(bytes(h)).decode()
    elif what == "index":
        entries[0]["index"] += 1
    elif what == "drop-middle":
        del entries[1]
    elif what == "swap":
        entries[0], entries[1] = entries[1], entries[0]
    elif what == "other-run":
        b["run_id"] = "run-0000004"
    elif what == "drop-last":
        del entries[-1]
    elif what == "add-last":
        entries.append(copy.deepcopy(entries[-1]))
    elif what == "reverse":
        entries.reverse()
    assert not verify_evidence(b, [signer().vkey]).ok


def test_a_bundle_without_its_last_entries_fails_as_incomplete(bundle):
    for cut in (1, 3):
        b = copy.deepcopy(bundle)
        del b["entries"][-cut:]
        result = verify_evidence(b, [signer().vkey])
        assert not result.ok and "does not prove completeness" in result.reason, result


def test_a_bundle_without_a_run_head_or_in_the_old_format_fails_unless_allowed(bundle):
    headless = copy.deepcopy(bundle)
    del headless["run_head"]
    assert "no signed run head" in verify_evidence(headless, [signer().vkey]).reason
    old = copy.deepcopy(headless)
    old["format"] = "tachograph.evidence/1"
    result = verify_evidence(old, [signer().vkey])
    assert not result.ok and "does not prove completeness" in result.reason
    allowed = verify_evidence(old, [signer().vkey], allow_incomplete=True)
    assert allowed.ok and not allowed.whole


def test_a_run_head_of_another_run_or_signed_by_another_key_fails(tmp_path, bundle):
    other = build_evidence(
        make_ledger(tmp_path / "l.db", checkpoint_every=25), "acme", "run-0000004"
    )
    swapped = copy.deepcopy(bundle)
    swapped["run_head"] = other["run_head"]
    assert "run head speaks of run 'run-0000004'" in verify_evidence(swapped, [signer().vkey]).reason
    forged = copy.deepcopy(bundle)
    text = forged["run_head"].split("\n\n")[0] + "\n"
    forged["run_head"] = signer(seed=8).sign(text)
    assert "run head does not verify" in verify_evidence(forged, [signer().vkey]).reason


def _ledger_with_runs(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=25)
    ledger.append(items(workload_events(runs=10)))
    return ledger


def test_evidence_refuses_when_the_run_id_column_of_a_runs_last_entry_was_edited(tmp_path):
    """The issue's tamper: the bundle would silently leave the event out; it is refused instead."""
    ledger = _ledger_with_runs(tmp_path)
    last = ledger.store.run_entries("acme", "run-0000003")[-1].index
    with sqlite3.connect(ledger.store.path) as c:
        c.execute("UPDATE entries SET run_id = 'elsewhere' WHERE idx = ?", (last,))
    with pytest.raises(VerificationError) as caught:
        build_evidence(ledger, "acme", "run-0000003")
    assert caught.value.position == last
    assert f"entry at index {last} belongs to run 'run-0000003' by its bytes" in caught.value.reason


@pytest.mark.parametrize("where", ["first", "middle"])
def test_evidence_refuses_when_an_earlier_entry_is_hidden_by_its_columns(tmp_path, where):
    ledger = _ledger_with_runs(tmp_path)
    rows = ledger.store.run_entries("acme", "run-0000003")
    hidden = rows[0 if where == "first" else len(rows) // 2].index
    with sqlite3.connect(ledger.store.path) as c:
        c.execute("UPDATE entries SET run_id = 'elsewhere' WHERE idx = ?", (hidden,))
    with pytest.raises(VerificationError, match="index columns edited"):
        build_evidence(ledger, "acme", "run-0000003")


def test_evidence_refuses_an_entry_of_another_run_moved_in_by_its_columns(tmp_path):
    ledger = _ledger_with_runs(tmp_path)
    theirs = ledger.store.run_entries("acme", "run-0000004")[-1]
    ours = ledger.store.run_entries("acme", "run-0000003")
    with sqlite3.connect(ledger.store.path) as c:
        c.execute("UPDATE entries SET run_id = 'run-0000003', seq = ? WHERE idx = ?", (len(ours), theirs.index))
    with pytest.raises(VerificationError) as caught:
        build_evidence(ledger, "acme", "run-0000003")
    assert caught.value.position == theirs.index


def test_garbage_is_rejected_not_crashed_on():
    assert not verify_evidence({"format": "nope"}).ok
    assert not verify_evidence(None).ok
    assert not verify_evidence({"format": "tachograph.evidence/1", "checkpoint": "x", "entries": []}).ok
