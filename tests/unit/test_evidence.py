"""Evidence bundles verify offline, and any tampering with one is caught."""

from __future__ import annotations

import base64
import copy

import orjson
import pytest

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
    assert result.entries == len(bundle["entries"]) and result.complete
    assert result.outcome in {"succeeded", "failed", "escalated", "cancelled"}


def test_a_bundle_is_plain_json_with_the_documented_members(bundle):
    again = orjson.loads(orjson.dumps(bundle))
    assert set(again) == {"format", "run_id", "workspace", "checkpoint", "verifier_keys", "entries"}
    entry = orjson.loads(base64.b64decode(again["entries"][0]["bytes"]))
    assert entry["event"]["run_id"] == "run-0000003" and entry["event"]["seq"] == 0


def test_a_bundle_signed_by_an_untrusted_key_fails(bundle):
    result = verify_evidence(bundle, [signer(seed=8).vkey])
    assert not result.ok and "checkpoint does not verify" in result.reason


@pytest.mark.parametrize("what", ["bytes", "proof", "index", "drop-middle", "swap", "other-run"])
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
    assert not verify_evidence(b, [signer().vkey]).ok


def test_garbage_is_rejected_not_crashed_on():
    assert not verify_evidence({"format": "nope"}).ok
    assert not verify_evidence(None).ok
    assert not verify_evidence({"format": "tachograph.evidence/1", "checkpoint": "x", "entries": []}).ok
