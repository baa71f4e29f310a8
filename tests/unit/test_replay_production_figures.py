"""Replays, compensating runs and old audit runs leave every production figure unchanged; they
are counted when asked for, and a stored replay's figures come back from the ledger.

One ledger, built in steps as a user would: the example agents run live through the runtime
(people decide their approvals), people give feedback, a publisher sends a run that merely claims
to be a replay; then the console reverts a change (a compensating run) and an old ledger's audit
run is there; then the triage runs are replayed twice into the ledger. After each step the
projection catches up and every report, view and Parquet export of production runs is taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.console.actions import revert
from api.keys_store import KeyStore
from api.settings import Settings
from domain.ledger import Ledger
from domain.origins import ALL, AUDIT_SOURCE, OriginSelection
from domain.ports import Incoming, Source
from projections.errors import LakeError
from projections.lake import export_parquet, lake_glob, read_manifest
from projections.projector import Projector, connect
from projections.reports import REPORTS, run_report
from projections.views import AGGREGATE_VIEWS, PRODUCTION_VIEWS
from replay.demo import record_examples
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from replay.recomputed import comparable, recomputed_summary, replay_results
from replay.report import Gate
from tachograph.agents import load_agent
from tachograph.contract.canonical import dumps
from tachograph.models import ModelRegistry
from tests.factories import FakeClock, make_ledger

WS = "acme"
TRIAGE, INVOICES = "examples.triage:triage", "examples.invoices:match_invoice"
# report groupings that split the runs every way a report can (origin among them)
GROUPINGS = {
    "cost-per-outcome": [["workflow", "week"], ["workflow", "route"], ["agent", "agent_version"]],
    "violations": [["workflow", "agent_version"], ["workflow", "policy"]],
    "budgets": [["workflow", "limit"], ["workflow"]],
    "approvals": [["workflow", "risk"], ["workflow", "decided_by"]],
    "outcomes": [["workflow"], ["workflow", "day"]],
}


def _event(run_id: str, seq: int, etype: str, data: dict[str, Any], agent: str = "outside-agent") -> bytes:
    return dumps({"spec": "tachograph.event/1", "event_id": f"{run_id}-{seq}", "workspace": WS,
                  "run_id": run_id, "seq": seq, "type": etype, "time": f"2026-11-0{2 + seq % 3}T10:00:0{seq}Z",
                  "agent": {"id": agent, "version": "1"}, "data": data})


def _feedback(ledger: Ledger, run_id: str, accepted: bool) -> None:
    seq = (ledger.store.run_entries(WS, run_id)[-1].seq or 0) + 1
    raw = dumps({"spec": "tachograph.event/1", "event_id": f"{run_id}-fb", "workspace": WS, "run_id": run_id,
                 "seq": seq, "type": "feedback.recorded", "time": "2027-01-01T00:00:00Z",
                 "agent": {"id": "reviewer-ui", "version": "1"},
                 "data": {"accepted": accepted, "by": "carol@acme.test"}})
    assert ledger.append([Incoming(raw, Source(kind="http", name=f"{WS}/k"))]).accepted == 1


@dataclass
class Snapshot:
    """Every production figure: reports in every grouping, views, and row counts."""

    reports: dict[str, Any]
    views: dict[str, Any]


def snapshot(con: Any) -> Snapshot:
    reports = {f"{name}/{','.join(by)}": run_report(con, name, by).to_json()
               for name, groupings in GROUPINGS.items() for by in groupings}
    views = {name: con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
             for name in (*PRODUCTION_VIEWS, *AGGREGATE_VIEWS)}
    return Snapshot(reports, views)


def outcomes(con: Any, runs: OriginSelection) -> dict[str, int]:
    return {r["workflow"]: r["runs"] for r in run_report(con, "outcomes", ["workflow"], runs=runs).records()}


@dataclass
class Steps:
    ledger: Ledger
    projector: Projector
    lake: Path
    production: Snapshot  # after the agents' runs alone
    with_platform_runs: Snapshot  # after a compensating run and an old audit run too
    after_replays: Snapshot  # after two replays recorded into the ledger
    lake_rows: tuple[int, int, int]  # rows exported at each step
    replays: dict[str, dict[str, Any]]
    replayed: list[str]
    compensating_run: str


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Steps]:
    tmp = tmp_path_factory.mktemp("origins")
    clock = FakeClock(1_800_000_000.0)
    ledger = make_ledger(tmp / "ledger.db", clock=clock, approval_decisions="person")
    triage = record_examples(ledger, WS, TRIAGE, __import__("examples.triage", fromlist=["x"]).inputs(10),
                             prefix="t", clock=clock)
    invoices = record_examples(ledger, WS, INVOICES, __import__("examples.invoices", fromlist=["x"]).inputs(6),
                               prefix="i", clock=clock)
    _feedback(ledger, triage[0], False)
    _feedback(ledger, triage[1], True)
    # a publisher's run claiming replay_of: a claim, so a production run like any other
    claimed = [_event("claims-a-replay", 0, "run.started", {"workflow": "ticket-triage", "mode": "execute",
                                                             "risk_tier": "low", "replay_of": triage[2],
                                                             "labels": {"replay.id": "r-large"}}),
               _event("claims-a-replay", 1, "run.completed", {"outcome": "failed"})]
    assert ledger.append([Incoming(r, Source(kind="http", name=f"{WS}/k")) for r in claimed]).accepted == 2

    con = connect(tmp / "analytics.duckdb")
    projector = Projector(ledger.store, con)
    lake = tmp / "lake"
    projector.catch_up()
    production = snapshot(con)
    first = export_parquet(con, lake, "test").rows

    # the console reverts an applied invoice change: a compensating run the platform writes
    keys = KeyStore(tmp / "keys.db", clock)
    _, secret = keys.create(WS, "approver", label="Pat Approver")
    app = create_app(Settings(data_dir=tmp / "data"), ledger=ledger, keys=keys, clock=clock)
    state, services = app.state.console, app.state.services
    _, session = state.sessions.sign_in(secret)
    change = next(c for c in state.board.applied(WS) if c.run_id in invoices)
    done = revert(services, session, change, "invoice-matching", {}, "posted twice")
    # an old ledger's audit run: reads recorded as a run by the API (source kind "audit")
    audit = [_event("audit-2026-11-02", 0, "run.started", {"workflow": "tachograph.audit", "mode": "execute",
                                                           "risk_tier": "low", "labels": {"kind": "audit-trail"}},
                    agent="tachograph-api"),
             _event("audit-2026-11-02", 1, "tool.called", {"call_id": "read-1", "tool": "tachograph.api.read",
                                                           "args": {"path": "/v1/runs"}, "status": "ok",
                                                           "latency_ms": 0, "side_effect": "read"})]
    assert ledger.append([Incoming(r, Source(kind=AUDIT_SOURCE, name=f"{WS}/k")) for r in audit]).accepted == 2
    projector.catch_up()
    with_platform_runs = snapshot(con)
    second = export_parquet(con, lake, "test").rows

    agent, models = load_agent(TRIAGE), ModelRegistry()
    recorded = load_runs(ledger.store, workflow="ticket-triage")
    replays = {}
    for rid, model in (("r-fidelity", None), ("r-large", "sim-large-v2")):
        config = ReplayConfig(rid, "2027-01-02T00:00:00Z", candidate_model=model, gate=Gate())
        replays[rid] = run_replay(recorded, agent, config, models, ledger=ledger)
        assert replays[rid]["recorded"]["quarantined"] == 0, replays[rid]["recorded"]
    projector.catch_up()
    after_replays = snapshot(con)
    third = export_parquet(con, lake, "test").rows
    yield Steps(ledger, projector, lake, production, with_platform_runs, after_replays, (first, second, third),
                replays, [r.run_id for r in recorded], done.compensating_run)
    con.close()


def test_compensating_and_audit_runs_leave_every_production_figure_unchanged(steps: Steps) -> None:
    assert steps.with_platform_runs == steps.production


def test_a_replay_leaves_every_production_report_and_view_unchanged(steps: Steps) -> None:
    assert set(steps.production.reports) == {f"{n}/{','.join(b)}" for n, bs in GROUPINGS.items() for b in bs}
    assert {n.split("/")[0] for n in steps.production.reports} == set(REPORTS)
    assert steps.after_replays == steps.production
    # and the figures are not empty: the production runs are all there (the claimed replay too)
    counted = outcomes(steps.projector.con, OriginSelection())
    assert counted == {"ticket-triage": 11, "invoice-matching": 6}


def test_the_parquet_lake_of_production_runs_gains_no_row_from_platform_runs(steps: Steps) -> None:
    first, second, third = steps.lake_rows
    assert first > 0 and second == 0 and third == 0
    assert read_manifest(steps.lake)["runs"] == {"origin": "production", "replay_id": None}
    con = steps.projector.con
    origins = con.execute(f"SELECT DISTINCT origin FROM read_parquet('{lake_glob(steps.lake, 'events')}', "
                          "hive_partitioning = true)").fetchall()
    assert origins == [("production",)]
    with pytest.raises(LakeError, match="holds production runs, not runs of every origin"):
        export_parquet(con, steps.lake, "test", runs=OriginSelection(ALL))


def test_a_lake_of_every_origin_holds_each_rows_origin(steps: Steps, tmp_path: Path) -> None:
    con = steps.projector.con
    export_parquet(con, tmp_path / "all", "test", runs=OriginSelection(ALL))
    got = dict(con.execute(f"SELECT origin, count(DISTINCT run_id) FROM read_parquet("
                           f"'{lake_glob(tmp_path / 'all', 'events')}', hive_partitioning = true) "
                           "GROUP BY origin").fetchall())
    assert got == {"production": 17, "compensation": 1, "audit": 1, "replay": 2 * len(steps.replayed)}


def test_each_origin_is_counted_when_asked_for(steps: Steps) -> None:
    con = steps.projector.con
    n = len(steps.replayed)
    assert outcomes(con, OriginSelection("replay")) == {"ticket-triage": 2 * n}
    assert outcomes(con, OriginSelection.parse(replay_id="r-large")) == {"ticket-triage": n}
    assert outcomes(con, OriginSelection.parse(replay_id="nobody")) == {}
    assert outcomes(con, OriginSelection("compensation")) == {"console.revert": 1}
    assert outcomes(con, OriginSelection("audit")) == {"tachograph.audit": 1}
    assert outcomes(con, OriginSelection(ALL)) == {"ticket-triage": 11 + 2 * n, "invoice-matching": 6,
                                                   "console.revert": 1, "tachograph.audit": 1}
    by_origin = run_report(con, "cost-per-outcome", ["origin", "replay_id"], runs=OriginSelection(ALL))
    assert {(r["origin"], r["replay_id"]): r["runs"] for r in by_origin.records()} == {
        ("production", None): 17, ("compensation", None): 1, ("audit", None): 1,
        ("replay", "r-fidelity"): n, ("replay", "r-large"): n}
    replay_rows = con.execute("SELECT run_id, replay_of FROM runs_all WHERE replay_id = 'r-large'").fetchall()
    assert sorted(of for _, of in replay_rows) == sorted(steps.replayed)
    assert con.execute("SELECT origin FROM runs_all WHERE run_id = ?", [steps.compensating_run]).fetchall() == [
        ("compensation",)]


def test_a_stored_replays_figures_come_back_from_its_runs_in_the_ledger(steps: Steps) -> None:
    con = steps.projector.con
    for rid, report in steps.replays.items():
        assert recomputed_summary(con, rid) == comparable(report["summary"]), rid
    # the what-if replay changed some outcomes; its recomputed "after" side counts its own runs
    large = steps.replays["r-large"]["summary"]
    assert large["changed_runs"] and large["before"] != large["after"]
    results = replay_results(con, "r-large")
    assert [r.run_id for r in results] == steps.replayed
    assert {r.replay_run_id for r in results} == {f"r-large.{run}" for run in steps.replayed}


def test_rejecting_feedback_carries_over_to_an_unchanged_replay_run_only(steps: Steps) -> None:
    con = steps.projector.con
    rejected = steps.replayed[0]  # feedback: rejected
    for rid in steps.replays:
        result = next(r for r in replay_results(con, rid) if r.run_id == rejected)
        assert result.before.accepted is False
        assert result.after.accepted == (None if result.changed else False)
