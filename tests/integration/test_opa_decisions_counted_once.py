"""OPA's decision log and the runtime's own records of the same decisions, through the real
ingestion paths (``POST /v1/events`` for agents' runs, ``POST /v1/opa/logs`` for OPA's log):
violation rates count each decision once (in the agent's run), and a decision-log run is no
agent's run (no run count, never running, no cost per outcome), while its other decisions count."""

from __future__ import annotations

import gzip
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from projections.projector import Projector, connect
from projections.reports import run_report
from replay.history import load_runs
from tachograph.contract.events import SPEC
from tachograph.policy import OpaClient
from tachograph.runtime import Runtime
from tachograph.transports import HttpTransport
from tests.harness import free_port
from tests.integration.api_support import Api, close_api, make_api, serving
from tests.integration.test_console_replay_form import _sign_in
from tests.integration.test_opa_decision_logs import REVISION, _bundle, _config, ask, wait_for
from tests.integration.test_runtime_policy import AGENT, policies

DAY = "2026-03-02"
OPA_RUN = f"opa.tachograph.decision.{DAY}"
POLICY = "tachograph/decision"
GZ = {"Content-Encoding": "gzip", "Content-Type": "application/json"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = make_api(tmp_path)
    yield a
    close_api(a)


def _events(run_id: str, *steps: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """An agent's run as the runtime publishes it (refund-agent, workflow refunds)."""
    started = ("run.started", {"workflow": "refunds", "mode": "execute", "risk_tier": "low"})
    return [{"spec": SPEC, "event_id": f"{run_id}-{n}", "workspace": "acme", "run_id": run_id, "seq": n,
             "type": t, "time": f"{DAY}T09:00:{n:02d}Z", "agent": {"id": "refund-agent", "version": "1.0.0"},
             "data": d} for n, (t, d) in enumerate([started, *steps])]


def _evaluated(decision: str, decision_id: str, amount: int) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {"policy": POLICY, "action": "refund", "decision": decision, "reason": decision,
                            "revision": "r1", "decision_id": decision_id}
    if decision != "allow":
        data["arguments"] = {"amount": amount}
    return ("policy.evaluated", data)


def _refund(amount: int) -> tuple[str, dict[str, Any]]:
    return ("tool.called", {"call_id": "t", "tool": "refund", "args": {"amount": amount}, "status": "ok",
                            "latency_ms": 2, "side_effect": "write"})


def _model(cost: str) -> tuple[str, dict[str, Any]]:
    return ("model.called", {"call_id": "m", "provider": "p", "model": "m", "input_tokens": 10,
                             "output_tokens": 2, "cost_usd": cost, "latency_ms": 5})


def _logged(decision_id: str, decision: str) -> dict[str, Any]:
    """A decision as OPA's decision_logs plugin uploads it."""
    return {"decision_id": decision_id, "path": POLICY, "timestamp": f"{DAY}T09:00:30.5Z",
            "labels": {"id": "opa-1", "version": "1.22.4"}, "input": {"tool": "refund"},
            "bundles": {"refunds": {"revision": "r1"}}, "result": {"decision": decision, "reason": decision}}


def _post_events(a: Api, events: list[dict[str, Any]]) -> None:
    r = a.client.post("/v1/events", json=events, headers=a.auth("publisher"))
    assert r.status_code == 200, r.text
    assert {x["status"] for x in r.json()["results"]} == {"accepted"}, r.text


def _upload(a: Api, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    r = a.client.post("/v1/opa/logs", content=gzip.compress(json.dumps(decisions).encode()),
                      headers={**a.auth("publisher"), **GZ})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _recorded(a: Api) -> None:
    """Three agent runs (a denied refund, an allowed one, one whose record disagrees with OPA's
    log) and OPA's log of those decisions plus one made for a service not using the runtime."""
    _post_events(a, _events("refund-1", _evaluated("deny", "d-1", 5000),
                            ("run.completed", {"outcome": "escalated"})))
    _post_events(a, _events("refund-2", _model("0.25"), _evaluated("allow", "d-2", 40), _refund(40),
                            ("run.completed", {"outcome": "succeeded"})))
    _post_events(a, _events("refund-3", _evaluated("allow", "d-4", 60), _refund(60),
                            ("run.completed", {"outcome": "succeeded"})))
    got = _upload(a, [_logged("d-1", "deny"), _logged("d-2", "allow"),
                      _logged("d-3", "deny"),  # a service without the runtime asked OPA
                      _logged("d-4", "deny")])  # OPA logged a denial the run says was allowed
    assert (got["recorded"], got["runs"]) == (4, [OPA_RUN])


def _report(con: Any, name: str, by: list[str]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items()} for r in run_report(con, name, by).records()]


def test_violation_rates_count_a_decision_in_both_records_once_and_a_decision_log_is_no_run(
        api: Api, tmp_path: Path) -> None:
    _recorded(api)
    con = connect(tmp_path / "analytics.duckdb")
    Projector(api.ledger.store, con, batch_size=3).catch_up()  # many small batches

    (p,) = _report(con, "violations", ["policy", "revision"])
    assert (p["policy"], p["revision"]) == (POLICY, "r1")
    # d-1, d-2, d-4 (allow) from the runs; d-3 and OPA's d-4 (deny, disagreeing) from the log
    assert (p["evaluations"], p["denials"], p["decision_log_evaluations"]) == (5, 3, 2)
    # runs are agents' runs: refund-1 denied; the decision log is none
    assert (p["runs"], p["runs_with_denial"], p["violation_rate"]) == (3, 1, pytest.approx(1 / 3))
    assert (p["tool_calls"], p["denials_per_1000_tool_calls"]) == (2, pytest.approx(500.0))

    rows = {(r["workflow"], r["agent"]): r for r in _report(con, "violations", ["workflow", "agent"])}
    agents, log = rows[("refunds", "refund-agent")], rows[(POLICY, "opa")]
    assert (agents["runs"], agents["runs_with_denial"], agents["denials"]) == (3, 1, 1)
    assert (log["runs"], log["runs_with_denial"], log["violation_rate"], log["denials"]) == (0, 0, None, 2)

    # the decision log is in runs_all, and in no run figure
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (3,)
    assert con.execute("SELECT run_id FROM runs_all WHERE decision_log").fetchall() == [(OPA_RUN,)]
    outcomes = _report(con, "outcomes", ["workflow"])
    assert [(r["workflow"], r["runs"], r["completed"]) for r in outcomes] == [("refunds", 3, 3)]
    costs = _report(con, "cost-per-outcome", ["workflow"])
    assert [(r["workflow"], r["runs"], str(r["total_cost_usd"])) for r in costs] == [
        ("refunds", 3, "0.250000000")]

    # a rebuild from scratch counts the same
    rebuilt = connect(tmp_path / "rebuilt.duckdb")
    Projector(api.ledger.store, rebuilt).rebuild()
    for name, by in (("violations", ["policy", "revision"]), ("violations", ["workflow", "agent"])):
        assert _report(rebuilt, name, by) == _report(con, name, by)
    rebuilt.close()
    con.close()


def test_a_decision_log_is_never_running_in_the_runs_list_the_api_or_the_console(
        api: Api, tmp_path: Path) -> None:
    _recorded(api)
    auditor = api.auth("auditor")
    listed = {r["run_id"]: r for r in api.client.get("/v1/runs", headers=auditor).json()["runs"]}
    assert set(listed) == {"refund-1", "refund-2", "refund-3", OPA_RUN}
    assert listed[OPA_RUN]["decision_log"] is True and listed[OPA_RUN]["origin"] == "production"
    assert listed[OPA_RUN]["outcome"] is None and not listed["refund-1"]["decision_log"]
    running = api.client.get("/v1/runs", params={"outcome": "running"}, headers=auditor)
    assert running.status_code == 200 and running.json()["runs"] == []
    logs = api.client.get("/v1/runs", params={"decision_log": "true"}, headers=auditor).json()["runs"]
    assert [r["run_id"] for r in logs] == [OPA_RUN]
    agents = api.client.get("/v1/runs", params={"decision_log": "false"}, headers=auditor).json()["runs"]
    assert len(agents) == 3

    con = connect(api.data_dir / "analytics.duckdb")
    Projector(api.ledger.store, con).catch_up()
    con.close()
    r = api.client.get("/v1/analytics/outcomes", params={"outcome": "running", "by": "workflow"},
                       headers=api.auth("analyst"))
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == []

    _sign_in(api, "engineer")
    page = html.unescape(api.client.get("/console/runs").text)
    totals = page[page.index('id="totals"'):page.index('id="runs-table"')]
    assert re.search(r'id="total-runs">3<', totals) and 'id="total-decision-logs">1<' in totals
    assert "running" not in totals  # the three runs completed; the decision log is not running
    assert "decision log" in page[page.index('id="runs-table"'):]
    assert "running" not in api.client.get("/console/runs", params={"outcome": "running"}).text.split(
        'id="runs-table"')[1].split("</table>")[0]
    run_page = html.unescape(api.client.get(f"/console/runs/{OPA_RUN}").text)
    assert 'id="run-outcome"' in run_page and ">decision log<" in run_page
    switches = api.client.get("/console/kill-switches").text
    assert "refunds" in switches and POLICY not in switches  # no workflow of an agent to halt

    # nor is it a run to replay
    assert {r.run_id for r in load_runs(api.ledger.store, finished_only=False)} == {
        "refund-1", "refund-2", "refund-3"}


def test_a_decision_log_someone_else_wrote_into_counts_as_a_run(api: Api, tmp_path: Path) -> None:
    """A publisher cannot hide a run's cost in a decision log: a run others appended to is a run."""
    _recorded(api)
    _post_events(api, [{"spec": SPEC, "event_id": "sneaky-1", "workspace": "acme", "run_id": OPA_RUN,
                        "seq": 5, "type": "model.called", "time": f"{DAY}T09:01:00Z",
                        "agent": {"id": "opa", "version": "1.22.4"}, "data": _model("9.5")[1]}])
    listed = {r["run_id"]: r for r in api.client.get("/v1/runs", headers=api.auth("auditor")).json()["runs"]}
    assert listed[OPA_RUN]["decision_log"] is False
    con = connect(tmp_path / "analytics.duckdb")
    Projector(api.ledger.store, con).catch_up()
    assert con.execute("SELECT decision_log FROM runs_all WHERE run_id = ?", [OPA_RUN]).fetchone() == (False,)
    costs = {r["workflow"]: r for r in _report(con, "cost-per-outcome", ["workflow"])}
    assert (costs[POLICY]["runs"], str(costs[POLICY]["total_cost_usd"])) == (1, "9.500000000")
    # its decisions still count once
    (p,) = _report(con, "violations", ["policy"])
    assert (p["evaluations"], p["denials"], p["runs"]) == (5, 3, 4)
    con.close()


@pytest.mark.opa
def test_a_real_opa_logging_the_runtimes_decisions_counts_each_once(api: Api, tmp_path: Path, opa_server) -> None:
    """Agents publish over HTTP, asking a real OPA before each tool call; the same OPA uploads its
    decision log to the API: every decision is in the ledger twice, and counted once."""
    with serving(api.app, free_port()) as url:
        opa = opa_server(bundle=_bundle(tmp_path), config=_config(tmp_path, url, api.secrets["publisher"]))
        transport = HttpTransport(url, api.secrets["publisher"])
        rt = Runtime(workspace="acme", transport=transport, policy=OpaClient(opa.url))
        allowed = rt.run(AGENT, {"order": "o-1", "amount": 40})
        denied = rt.run(AGENT, {"order": "o-2", "amount": 5000})
        transport.close(10)
        own = ask(opa.url, 7000)  # a service that does not use the runtime asks OPA itself
        recorded = [p for r in (allowed, denied) for p in policies(r.events)]
        assert [p["decision"] for p in recorded] == ["allow", "allow", "allow", "deny"]
        assert recorded[-1]["arguments"] == {"order": "o-2", "amount": 5000}
        logged = wait_for(api, {p["decision_id"] for p in recorded} | {own})
        opa.stop()
    assert len(logged) == 5  # the runtime's four decisions and the service's one, in OPA's log too

    con = connect(tmp_path / "analytics.duckdb")
    Projector(api.ledger.store, con).catch_up()
    (p,) = _report(con, "violations", ["policy", "revision"])
    assert (p["policy"], p["revision"]) == (POLICY, REVISION)
    assert (p["evaluations"], p["denials"], p["decision_log_evaluations"]) == (5, 2, 1)
    assert (p["runs"], p["runs_with_denial"], p["tool_calls"]) == (2, 1, 3)
    assert con.execute("SELECT count(*), count(*) FILTER (WHERE decision_log) FROM runs_all").fetchone() == (3, 1)
    assert [(r["workflow"], r["runs"]) for r in _report(con, "outcomes", ["workflow"])] == [("refunds", 2)]
    con.close()
    running = api.client.get("/v1/runs", params={"outcome": "running"}, headers=api.auth("auditor"))
    assert running.json()["runs"] == []
