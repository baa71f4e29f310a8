"""Analytics over HTTP take the runs list's filters: workflow, agent, outcome, since/until, denials."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from domain.ports import Incoming, Source
from projections.demo import analytics_path
from projections.projector import open_projector
from tachograph.contract.canonical import dumps
from tests.integration.api_support import Api, close_api, make_api, publish, workload


def runs_of(events: list[dict[str, Any]], workspace: str = "acme") -> dict[str, dict[str, Any]]:
    """Per run: workflow, agent, start date, outcome (None while running), denials."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["workspace"] != workspace:
            continue
        r = out.setdefault(e["run_id"], {"outcome": None, "denials": 0})
        if e["type"] == "run.started":
            r.update(workflow=e["data"]["workflow"], agent=e["agent"]["id"], day=e["time"][:10])
        elif e["type"] == "run.completed":
            r["outcome"] = e["data"]["outcome"]
        elif e["type"] == "policy.evaluated" and e["data"]["decision"] == "deny":
            r["denials"] += 1
    return out


@pytest.fixture(scope="module")
def projected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, dict[str, Any]]]]:
    a = make_api(tmp_path_factory.mktemp("analytics"))
    events = workload(runs=40, seed=8, workspaces=("acme", "globex"))
    first = next(e for e in events if e["workspace"] == "acme" and e["type"] == "run.started")
    events.append({**first, "run_id": "still-running", "event_id": "still-running-0"})
    publish(a, [e for e in events if e["workspace"] == "acme"])
    a.ledger.append([Incoming(dumps(e), Source(kind="test")) for e in events if e["workspace"] == "globex"])
    with open_projector(a.ledger.store, analytics_path(a.data_dir)) as projector:
        projector.catch_up()
    yield a, runs_of(events)
    close_api(a)


def report(a: Api, name: str, **params: Any) -> dict[str, Any]:
    r = a.client.get(f"/v1/analytics/{name}", params=params, headers=a.auth("analyst"))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def total_runs(body: dict[str, Any]) -> int:
    return sum(int(row["runs"]) for row in body["rows"])


def test_a_report_counts_only_the_keys_workspace(projected: tuple[Api, dict[str, dict[str, Any]]]) -> None:
    a, runs = projected
    assert total_runs(report(a, "outcomes", by="workflow")) == len(runs)


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "escalated", "running"])
def test_the_outcome_filter_counts_only_runs_that_ended_so(
    projected: tuple[Api, dict[str, dict[str, Any]]], outcome: str,
) -> None:
    a, runs = projected
    body = report(a, "outcomes", by="workflow", outcome=outcome)
    want = sum(1 for r in runs.values() if r["outcome"] == (None if outcome == "running" else outcome))
    assert total_runs(body) == want
    assert body["filters"] == {"outcome": outcome}
    if outcome == "succeeded":
        assert all(row["succeeded"] == row["runs"] for row in body["rows"])


def test_workflow_and_agent_filters_apply_even_when_not_grouped_by(
    projected: tuple[Api, dict[str, dict[str, Any]]],
) -> None:
    a, runs = projected
    some = next(iter(runs.values()))
    body = report(a, "cost-per-outcome", by="week", workflow=some["workflow"])
    assert total_runs(body) == sum(1 for r in runs.values() if r["workflow"] == some["workflow"])
    body = report(a, "violations", by="workflow", agent=some["agent"])
    assert total_runs(body) == sum(1 for r in runs.values() if r["agent"] == some["agent"])


def test_since_and_until_bound_the_start_dates(projected: tuple[Api, dict[str, dict[str, Any]]]) -> None:
    a, runs = projected
    days = sorted({r["day"] for r in runs.values()})
    since, until = days[1], days[-2]
    body = report(a, "outcomes", by="day", since=since, until=until)
    assert all(since <= row["day"] < until for row in body["rows"])
    assert total_runs(body) == sum(1 for r in runs.values() if since <= r["day"] < until)


def test_has_denial_splits_the_runs(projected: tuple[Api, dict[str, dict[str, Any]]]) -> None:
    a, runs = projected
    denied = total_runs(report(a, "violations", by="workflow", has_denial="true"))
    clean = total_runs(report(a, "violations", by="workflow", has_denial="false"))
    assert denied == sum(1 for r in runs.values() if r["denials"])
    assert denied + clean == len(runs)


def test_filter_values_are_data_never_sql(projected: tuple[Api, dict[str, dict[str, Any]]]) -> None:
    a, _ = projected
    body = report(a, "outcomes", by="workflow", workflow="x' OR '1'='1")
    assert body["rows"] == []
    bad = a.client.get("/v1/analytics/outcomes", params={"until": "2026-02-30"}, headers=a.auth("analyst"))
    assert bad.status_code == 422 and "until" in bad.json()["message"]


def test_costs_beyond_the_money_maximum_are_refused_and_every_cost_report_keeps_answering(tmp_path) -> None:
    a = make_api(tmp_path)
    try:
        beta = a.key("beta", "publisher")
        events = workload(runs=4, seed=3, workspaces=("acme", "beta"))
        call = next(e for e in events if e["type"] == "model.called" and e["workspace"] == "acme")
        # issue 13 item 3: 1e30 stopped projections for every tenant, just under 1e29 broke the report
        over = [dumps({**call, "run_id": f"big-{n}", "event_id": f"big-{n}", "seq": 1}).replace(
            dumps(call["data"]["cost_usd"]), cost) for n, cost in enumerate((b"1e30", b"9" * 29))]
        body = b"[" + b",".join([*over, *(dumps(e) for e in events if e["workspace"] == "acme")]) + b"]"
        r = a.client.post("/v1/events", content=body,
                          headers={**a.auth("publisher"), "Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["quarantined"] == 2
        assert all("data.cost_usd" in x["reason"] and "1000000000000" in x["reason"]
                   for x in r.json()["results"][:2])
        r = a.client.post("/v1/events", content=b"[" + b",".join(
            dumps(e) for e in events if e["workspace"] == "beta") + b"]",
            headers={"Authorization": f"Bearer {beta}", "Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["quarantined"] == 0
        with open_projector(a.ledger.store, analytics_path(a.data_dir)) as projector:
            projector.catch_up()
        for secret in (a.secrets["analyst"], a.key("beta", "analyst")):
            got = a.client.get("/v1/analytics/cost-per-outcome", params={"by": "workflow"},
                               headers={"Authorization": f"Bearer {secret}"})
            assert got.status_code == 200, got.text
            assert got.json()["rows"]
    finally:
        close_api(a)


def _sign_in(a: Api, role: str) -> None:
    """Sign the test client in to the console with the role's key."""
    import re

    page = a.client.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = a.client.post("/console/login", data={"api_key": a.secrets[role], "csrf": token},
                      follow_redirects=False)
    assert r.status_code == 303, r.text


def test_a_run_with_an_unpriced_call_has_an_unknown_cost_in_the_runs_list_and_the_cost_report(
        tmp_path: Any) -> None:
    from tests.factories import event

    def call(run: str, seq: int, cost: str, priced: bool | None = None) -> dict[str, Any]:
        data = {"call_id": f"m{seq}", "provider": "ollama", "model": "smollm2-135m-instruct",
                "input_tokens": 100, "output_tokens": 10, "cost_usd": cost, "latency_ms": 3}
        return event(run, seq, "model.called", data if priced is None else {**data, "priced": priced})

    started = {"workflow": "local-llm", "mode": "execute", "risk_tier": "low"}
    events = [
        event("mixed", 0, data=started), call("mixed", 1, "0.2"), call("mixed", 2, "0", priced=False),
        event("mixed", 3, "run.completed", {"outcome": "succeeded"}),
        event("priced", 0, data=started), call("priced", 1, "0.1"),
        event("priced", 2, "run.completed", {"outcome": "succeeded"}),
    ]
    a = make_api(tmp_path)
    try:
        publish(a, events)
        with open_projector(a.ledger.store, analytics_path(a.data_dir)) as projector:
            projector.catch_up()
        rows = report(a, "cost-per-outcome", by="workflow")["rows"]
        assert len(rows) == 1
        row = rows[0]
        assert (row["runs"], row["successful_outcomes"]) == (2, 2)
        assert (row["unpriced_runs"], row["unpriced_calls"], row["priced_cost_usd"]) == (1, 1, "0.300000000")
        assert row["total_cost_usd"] is None and row["cost_per_outcome_usd"] is None
        r = a.client.get("/v1/runs", headers=a.auth("auditor"))
        assert r.status_code == 200, r.text
        listed = {s["run_id"]: s for s in r.json()["runs"]}
        assert (listed["mixed"]["cost_usd"], listed["mixed"]["unpriced_calls"]) == (None, 1)
        assert listed["mixed"]["priced_cost_usd"] == "0.2"
        assert (listed["priced"]["cost_usd"], listed["priced"]["unpriced_calls"]) == ("0.1", 0)
        _sign_in(a, "auditor")
        runs_page = a.client.get("/console/runs")
        assert runs_page.status_code == 200, runs_page.text
        assert 'id="unpriced-runs">1 run(s) with calls of no known price' in runs_page.text
        assert ">unknown</span>" in runs_page.text and "$0.1</td>" in runs_page.text
        run_page = a.client.get("/console/runs/mixed")
        assert run_page.status_code == 200, run_page.text
        assert "unknown: 1 model call(s) with no known price (priced calls $0.2)" in run_page.text
        assert "no known price</span>" in run_page.text
        a.client.cookies.clear()
        _sign_in(a, "analyst")
        cost_page = a.client.get("/console/analytics")
        assert cost_page.status_code == 200, cost_page.text
        assert "<th>unpriced runs</th>" in cost_page.text and "<th>priced cost usd</th>" in cost_page.text
    finally:
        close_api(a)
