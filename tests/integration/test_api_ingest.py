"""HTTP ingest: per-item results, bad input as clear 4xx, nothing valid lost or duplicated."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

from api.deps import Limits
from domain.verify import verify_log
from tachograph.contract.canonical import dumps
from tests.integration.api_support import Api, api, make_api, publish, workload

__all__ = ["api"]


def _stored_event_ids(a: Api) -> Counter[str]:
    return Counter(r.event_id for r in a.ledger.store.entries() if r.kind == "event")


def test_a_json_array_is_appended_with_one_result_per_item(api: Api) -> None:
    events = workload(runs=3)
    body = publish(api, events)
    assert body["accepted"] == len(events)
    assert [r["status"] for r in body["results"]] == ["accepted"] * len(events)
    assert [r["index"] for r in body["results"]] == list(range(len(events)))
    assert _stored_event_ids(api) == Counter(e["event_id"] for e in events)


def test_ndjson_and_gzip_bodies_are_accepted_and_resending_is_a_duplicate(api: Api) -> None:
    events = workload(runs=2)
    nd = b"\n".join(dumps(e) for e in events) + b"\n"
    headers = {**api.auth("publisher"), "Content-Type": "application/x-ndjson"}
    r = api.client.post("/v1/events", content=nd, headers=headers)
    assert r.json()["accepted"] == len(events)
    r = api.client.post("/v1/events", content=gzip.compress(nd),
                        headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.json()["duplicates"] == len(events) and r.json()["accepted"] == 0
    assert _stored_event_ids(api) == Counter(e["event_id"] for e in events)


def test_bad_items_are_quarantined_with_a_reason_and_good_ones_still_land(api: Api) -> None:
    good = workload(runs=1)
    bad_type = dict(good[0], event_id="x-1", run_id="other", seq="zero")
    body = b"[" + dumps(good[0]) + b"," + dumps(bad_type) + b',42,' + b",".join(
        dumps(e) for e in good[1:]) + b"]"
    r = api.client.post("/v1/events", content=body,
                        headers={**api.auth("publisher"), "Content-Type": "application/json"})
    assert r.status_code == 200
    out = r.json()
    assert out["accepted"] == len(good) and out["quarantined"] == 2
    reasons = [x["reason"] for x in out["results"] if x["status"] == "quarantined"]
    assert "seq" in reasons[0] and "object" in reasons[1]
    assert _stored_event_ids(api) == Counter(e["event_id"] for e in good)
    q = api.client.get("/v1/quarantine", headers=api.auth("auditor")).json()
    assert len(q["items"]) == 2 and "seq" in q["items"][0]["reason"]


def test_an_event_of_another_workspace_is_rejected_and_not_stored(api: Api) -> None:
    ev = workload(runs=1, workspaces=("globex",))[0]
    out = publish(api, [ev])
    assert out["rejected"] == 1 and "globex" in out["results"][0]["reason"]
    assert not _stored_event_ids(api)


def test_malformed_bodies_get_clear_4xx_errors_and_store_nothing(api: Api) -> None:
    h = api.auth("publisher")
    cases = [
        (b"{not json", "application/json", 400, "not JSON"),
        (b'"a string"', "application/json", 400, "array"),
        (b"<xml/>", "application/xml", 415, "content-type"),
        (b"\x1f\x8b\x08garbage", "application/json", 400, "gzip"),
    ]
    for body, ctype, status, words in cases:
        extra = {"Content-Encoding": "gzip"} if body.startswith(b"\x1f\x8b") else {}
        r = api.client.post("/v1/events", content=body, headers={**h, "Content-Type": ctype, **extra})
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["message"]
    assert api.ledger.store.size() == 0


def test_oversize_bodies_and_gzip_bombs_get_413_and_earlier_events_stay(tmp_path: Path) -> None:
    a = make_api(tmp_path, Limits(max_body_bytes=50_000, max_batch=100))
    events = workload(runs=1)
    publish(a, events)
    h = {**a.auth("publisher"), "Content-Type": "application/json"}
    r = a.client.post("/v1/events", content=b"[" + b" " * 60_000 + b"]", headers=h)
    assert r.status_code == 413 and "limit" in r.json()["message"]
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    r = a.client.post("/v1/events", content=bomb, headers={**h, "Content-Encoding": "gzip"})
    assert r.status_code == 413
    many = b"[" + b",".join(b"{}" for _ in range(101)) + b"]"
    r = a.client.post("/v1/events", content=many, headers=h)
    assert r.status_code == 413 and "101 events" in r.json()["message"]
    assert _stored_event_ids(a) == Counter(e["event_id"] for e in events)
    store = a.ledger.store
    a.ledger.checkpoint(force=True)
    result = verify_log(store.raw_entries(), [c.note for c in store.checkpoints()],
                        [a.ledger.signer.vkey], origin=store.get_meta("origin"))
    assert result.ok, result.reason


def test_values_beyond_storage_bounds_are_quarantined_naming_the_field_and_the_rest_lands(api: Api) -> None:
    good = workload(runs=2)
    call = next(e for e in good if e["type"] == "model.called")
    big_seq = dict(good[0], event_id="big-seq", run_id="big", seq=2**63)  # answered 500 before
    big_cost = dumps(dict(call, event_id="big-cost", run_id="big2", seq=1)).replace(
        dumps(call["data"]["cost_usd"]), b"1e30")
    body = b"[" + dumps(big_seq) + b"," + big_cost + b"," + b",".join(dumps(e) for e in good) + b"]"
    r = api.client.post("/v1/events", content=body,
                        headers={**api.auth("publisher"), "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["accepted"] == len(good) and out["quarantined"] == 2 and out["held"] == 0
    reasons = [x["reason"] for x in out["results"][:2]]
    assert "seq" in reasons[0] and str(2**53 - 1) in reasons[0]
    assert "data.cost_usd" in reasons[1] and "1000000000000" in reasons[1]
    assert _stored_event_ids(api) == Counter(e["event_id"] for e in good)
