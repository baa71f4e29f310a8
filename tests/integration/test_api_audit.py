"""Audit reads: runs list, timeline, events, evidence, proofs; every read lands in the ledger."""

from __future__ import annotations

import sqlite3
from decimal import Decimal

from domain import merkle
from domain.evidence import verify_evidence
from tests.integration.api_support import Api, api, audit_reads, publish, workload

__all__ = ["api"]


def test_every_history_and_evidence_read_is_recorded_in_the_ledger(api: Api) -> None:
    events = workload(runs=3)
    publish(api, events)
    run = events[0]["run_id"]
    h = api.auth("auditor")
    for path in ("/v1/runs", f"/v1/runs/{run}/timeline", f"/v1/runs/{run}/events",
                 f"/v1/runs/{run}/evidence"):
        assert api.client.get(path, headers=h).status_code == 200
    reads = audit_reads(api)
    assert [r["data"]["action"] for r in reads] == [
        "runs.list", "run.timeline", "run.events", "run.evidence"]
    key_id = api.secrets["auditor"].split("_")[1]
    assert all(r["actor"] == {"key_id": key_id, "role": "auditor"} for r in reads)
    assert all(r["type"] == "audit.read" and r["workspace"] == "acme" for r in reads)
    assert reads[1]["data"]["target"] == {"workspace": "acme", "run_id": run}
    # a failed read (missing run) is not recorded as a read
    assert api.client.get("/v1/runs/nope/timeline", headers=h).status_code == 404
    assert len(audit_reads(api)) == 4


def test_quarantine_and_proof_reads_are_recorded_with_what_they_asked_for(api: Api) -> None:
    publish(api, [*workload(runs=2), {"not": "an event"}])
    api.ledger.checkpoint(force=True)
    size = api.ledger.store.size()
    h = api.auth("auditor")
    q = api.client.get("/v1/quarantine", headers=h)
    assert q.status_code == 200 and len(q.json()["items"]) == 1
    assert api.client.get(f"/v1/log/proof/inclusion?index=1&size={size}", headers=h).status_code == 200
    assert api.client.get(f"/v1/log/proof/consistency?first=2&second={size}",
                          headers=h).status_code == 200
    args = [r["data"] for r in audit_reads(api)]
    assert [(a["action"], a["target"]) for a in args] == [
        ("quarantine.list", {"workspace": "acme", "returned": 1}),
        ("log.inclusion", {"index": 1, "size": size}),
        ("log.consistency", {"first": 2, "second": size}),
    ]
    assert args[1]["query"] == {"index": "1", "size": str(size)}
    # a proof that cannot be given is not recorded as a read
    assert api.client.get(f"/v1/log/proof/inclusion?index={size * 9}&size={size * 10}",
                          headers=h).status_code == 404
    assert len(audit_reads(api)) == 3


def test_runs_list_filters_and_pages_without_gaps_or_repeats(api: Api) -> None:
    events = workload(runs=12)
    publish(api, events)
    h = api.auth("engineer")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 5, "order": "asc", **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/runs", params=params, headers=h).json()
        seen += [r["run_id"] for r in page["runs"] if r["workflow"] != "tachograph.audit"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    runs = list(dict.fromkeys(e["run_id"] for e in events))
    assert seen == runs
    wf = events[0]["data"]["workflow"]
    only = api.client.get("/v1/runs", params={"workflow": wf, "limit": 500}, headers=h).json()["runs"]
    assert only and all(r["workflow"] == wf for r in only)
    denied = api.client.get("/v1/runs", params={"has_denial": True}, headers=h).json()["runs"]
    assert all(r["denials"] > 0 for r in denied)
    costs = {r["run_id"]: Decimal(r["cost_usd"]) for r in only}
    expected = sum((Decimal(str(e["data"]["cost_usd"])) for e in events
                    if e["run_id"] == only[0]["run_id"] and e["type"] == "model.called"), Decimal(0))
    assert costs[only[0]["run_id"]] == expected


def test_run_events_keep_their_ledger_positions_and_exact_money(api: Api) -> None:
    events = workload(runs=2)
    out = publish(api, events)
    run = events[0]["run_id"]
    body = api.client.get(f"/v1/runs/{run}/events", headers=api.auth("auditor")).json()
    mine = [(r["index"], r["event_id"]) for r in out["results"] if r["run_id"] == run]
    assert [(e["index"], e["event"]["event_id"]) for e in body["entries"]] == mine
    assert body["entries"][0]["prev"] is None
    assert body["entries"][1]["prev"] == body["entries"][0]["leaf_hash"]
    sent = {e["event_id"]: e for e in events}
    for e in body["entries"]:
        if e["event"]["type"] == "model.called":
            assert Decimal(str(e["event"]["data"]["cost_usd"])) == Decimal(
                str(sent[e["event"]["event_id"]]["data"]["cost_usd"]))


def test_evidence_and_proofs_verify_against_the_signed_checkpoint(api: Api) -> None:
    events = workload(runs=3)
    publish(api, events)
    run = events[0]["run_id"]
    h = api.auth("auditor")
    bundle = api.client.get(f"/v1/runs/{run}/evidence", headers=h).json()
    checked = verify_evidence(bundle, [api.ledger.signer.vkey])
    assert checked.ok and checked.whole and bundle["format"] == "tachograph.evidence/2"
    bundle["entries"].pop()
    assert "does not prove completeness" in verify_evidence(bundle, [api.ledger.signer.vkey]).reason
    cp = api.client.get("/v1/log/checkpoint", headers=h).json()
    size = cp["size"]
    proof = api.client.get("/v1/log/proof/inclusion", params={"index": 2, "size": size},
                           headers=h).json()
    merkle.verify_inclusion(bytes.fromhex(proof["leaf_hash"]), 2, size,
                            [bytes.fromhex(x) for x in proof["proof"]], bytes.fromhex(cp["root"]))
    c = api.client.get("/v1/log/proof/consistency", params={"first": 3, "second": size},
                       headers=h).json()
    merkle.verify_consistency(3, size, bytes.fromhex(c["first_root"]), bytes.fromhex(c["second_root"]),
                              [bytes.fromhex(x) for x in c["proof"]])
    bad = api.client.get("/v1/log/proof/inclusion", params={"index": size, "size": size}, headers=h)
    assert bad.status_code == 404
    status = api.client.get("/v1/log/verification", headers=h).json()
    assert status["ok"] and status["entries"] == api.ledger.store.size()


def test_timeline_lists_steps_in_order_with_summaries(api: Api) -> None:
    events = workload(runs=1)
    publish(api, events)
    run = events[0]["run_id"]
    t = api.client.get(f"/v1/runs/{run}/timeline", headers=api.auth("engineer")).json()
    assert [s["seq"] for s in t["steps"]] == list(range(len(events)))
    assert t["steps"][0]["summary"].startswith("started ")
    assert t["run"]["outcome"] == events[-1]["data"].get("outcome", t["run"]["outcome"])
    assert t["steps"][0]["offset_ms"] == 0


def test_health_metrics_and_offline_docs_need_no_key(api: Api) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    assert api.client.get("/readyz").json()["status"] == "ok"
    publish(api, workload(runs=1))
    metrics = api.client.get("/metrics").text
    assert 'tacho_ingest_events_total{path="http",status="accepted"}' in metrics
    assert 'tacho_http_requests_total{method="POST",route="/v1/events",status="200"} 1.0' in metrics
    api.client.get("/v1/runs")  # no key: counted under its route with its status
    assert 'route="/v1/runs",status="401"} 1.0' in api.client.get("/metrics").text
    docs = api.client.get("/docs").text
    assert "/static/swagger-ui-bundle.js" in docs and "cdn." not in docs and "https://" not in docs
    assert api.client.get("/static/swagger-ui-bundle.js").status_code == 200
    spec = api.client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert op.get("summary") or op.get("description"), path


def test_quarantine_reads_are_previews_paged_and_the_raw_bytes_come_on_request(api: Api) -> None:
    import hashlib

    # issue 13 item 7: 8 large junk items gave a 110 MiB quarantine list
    junk = [bytes([65 + n]) * (1_500_000 + n) + b"\xff" for n in range(8)]
    h_pub = {**api.auth("publisher"), "Content-Type": "application/x-ndjson"}
    for j in junk:
        r = api.client.post("/v1/events", content=j, headers=h_pub)
        assert r.status_code == 200 and r.json()["quarantined"] == 1
    h = api.auth("auditor")
    r = api.client.get("/v1/quarantine", headers=h)
    assert r.status_code == 200
    assert len(r.content) < 32 * 1024  # was the whole 12 MB, now 8 previews of 1 KiB
    items = r.json()["items"]
    assert len(items) == 8 and r.json()["next_cursor"] is None
    for item, j in zip(items, junk, strict=True):
        assert item["workspace"] == "acme"  # not JSON: attributed to the key that sent it
        assert item["raw"] == j[:1024].decode("utf-8", "replace")
        assert (item["raw_size"], item["raw_kept"]) == (len(j), len(j))
        assert item["raw_sha256"] == hashlib.sha256(j).hexdigest()
    first = api.client.get("/v1/quarantine?limit=3", headers=h).json()
    second = api.client.get(f"/v1/quarantine?limit=3&cursor={first['next_cursor']}", headers=h).json()
    assert [i["id"] for i in first["items"] + second["items"]] == [i["id"] for i in items[:6]]
    assert api.client.get("/v1/quarantine?limit=501", headers=h).status_code == 422

    qid = items[2]["id"]
    raw = api.client.get(f"/v1/quarantine/{qid}/raw", headers=h)
    assert raw.status_code == 200 and raw.content == junk[2]
    assert raw.headers["content-type"] == "application/octet-stream"
    assert raw.headers["x-raw-sha256"] == hashlib.sha256(junk[2]).hexdigest()
    other = api.key("other", "auditor")
    assert api.client.get(f"/v1/quarantine/{qid}/raw",
                          headers={"Authorization": f"Bearer {other}"}).status_code == 404
    assert api.client.get(f"/v1/quarantine/{qid}/raw", headers=api.auth("publisher")).status_code == 403
    assert api.client.get("/v1/quarantine/999999/raw", headers=h).status_code == 404
    reads = [(a["action"], a["target"]) for a in (x["data"] for x in audit_reads(api))]
    assert reads[-1] == ("quarantine.raw", {"workspace": "acme", "id": qid})
    assert [a for a, _ in reads].count("quarantine.list") == 3


def test_evidence_of_a_run_whose_last_entry_lost_its_run_id_column_is_refused_not_cut_short(api: Api) -> None:
    """Issue 13 item 9 over HTTP: the bundle is refused with the position, never built without the event."""
    events = workload(runs=3)
    publish(api, events)
    run = events[0]["run_id"]
    last = api.ledger.store.run_entries("acme", run)[-1].index
    with sqlite3.connect(api.ledger.store.path) as c:
        c.execute("UPDATE entries SET run_id = 'elsewhere' WHERE idx = ?", (last,))
    got = api.client.get(f"/v1/runs/{run}/evidence", headers=api.auth("auditor"))
    assert got.status_code == 500, got.text
    assert f"at position {last}" in got.json()["message"] and "by its bytes" in got.json()["message"]
