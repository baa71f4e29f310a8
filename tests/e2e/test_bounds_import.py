"""Values beyond what storage holds, through `tacho import`: refused per line, the rest lands,
and the projections and the cost report keep working for every tenant (issue 13, items 3-4)."""

from __future__ import annotations

import json

from tachograph.contract.canonical import dumps
from tests.cli_support import tacho
from tests.factories import event

MODEL_CALL = {"call_id": "c1", "provider": "p", "model": "m", "input_tokens": 10,
              "output_tokens": 5, "cost_usd": "0.25", "latency_ms": 12}


def _run(ws: str, run: str, cost: object = "0.25") -> list[bytes]:
    """A complete run whose model call costs ``cost`` (the raw JSON text of it)."""
    evs = [event(run, 0, workspace=ws),
           event(run, 1, "model.called", {**MODEL_CALL, "cost_usd": "COST"}, workspace=ws),
           event(run, 2, "run.completed", {"outcome": "succeeded"}, workspace=ws)]
    lines = [dumps(e) for e in evs]
    lines[1] = lines[1].replace(b'"COST"', cost if isinstance(cost, bytes) else dumps(cost))
    return lines


def test_import_refuses_over_bound_lines_and_projections_and_cost_reports_keep_working(tmp_path):
    huge_seq = dumps(event("r-seq", 2**63, "model.called", MODEL_CALL, workspace="beta"))
    lines = [
        *_run("acme", "ok-1"),
        *_run("acme", "big", b"1e30")[:2],  # cost_usd 1e30: broke `tacho project` for everyone
        *_run("beta", "under", b"99999999999999999999999999999")[:2],  # just under 1e29
        huge_seq,  # seq >= 2^63: crashed the import with an OverflowError
        *_run("beta", "ok-2"),
    ]
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = json.loads(tacho(tmp_path, "import", str(src), "--json").stdout)
    assert out["accepted"] == 3 + 1 + 1 + 3  # both good runs, and run.started of "big" and "under"
    assert out["quarantined"] == 3 and out["held"] == 0

    q = json.loads(tacho(tmp_path, "quarantine", "list", "--json").stdout)["items"]
    reasons = {item["source"]["line"]: item["reason"] for item in q}
    assert "data.cost_usd" in reasons[5] and "1000000000000" in reasons[5]
    assert "data.cost_usd" in reasons[7] and "1000000000000" in reasons[7]
    assert "seq" in reasons[8] and str(2**53 - 1) in reasons[8]

    tacho(tmp_path, "project")
    report = json.loads(tacho(tmp_path, "report", "cost-per-outcome", "--by", "workspace", "--json").stdout)
    rows = report["rows"] if isinstance(report, dict) else report
    totals = {r["workspace"]: r["total_cost_usd"] for r in rows}
    assert set(totals) == {"acme", "beta"}
    assert all(float(v) == 0.25 for v in totals.values())
