"""Over HTTP: each run names its origin; analytics and exports count production runs unless asked."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest

from projections.demo import analytics_path
from projections.projector import open_projector
from replay.demo import record_examples
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from tachograph.agents import load_agent
from tachograph.models import ModelRegistry
from tests.integration.api_support import Api, close_api, make_api, publish

TRIAGE = "examples.triage:triage"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, list[str]]]:
    """Six triage runs recorded live, one publisher run that claims to be a replay, and a replay
    of the six recorded into the ledger as replay ``r-1``."""
    a = make_api(tmp_path_factory.mktemp("origins"))
    inputs = __import__("examples.triage", fromlist=["inputs"]).inputs(6)
    ids = record_examples(a.ledger, "acme", TRIAGE, inputs, prefix="t")
    started = {"workflow": "ticket-triage", "mode": "execute", "risk_tier": "low", "replay_of": ids[0],
               "labels": {"replay.id": "r-1"}}
    publish(a, [{"spec": "tachograph.event/1", "event_id": "claimed-0", "workspace": "acme",
                 "run_id": "claimed", "seq": 0, "type": "run.started", "time": "2026-11-02T10:00:00Z",
                 "agent": {"id": "triage-agent", "version": "1"}, "data": started}])
    run_replay(load_runs(a.ledger.store, run_ids=ids), load_agent(TRIAGE),
               ReplayConfig("r-1", "2026-11-03T00:00:00Z", candidate_model="sim-large-v2"), ModelRegistry(),
               ledger=a.ledger)
    with open_projector(a.ledger.store, analytics_path(a.data_dir)) as projector:
        projector.catch_up()
    yield a, ids
    close_api(a)


def get(a: Api, path: str, role: str = "analyst", **params: Any) -> Any:
    r = a.client.get(path, params=params, headers=a.auth(role))
    assert r.status_code == 200, r.text
    return r.json() if r.headers["content-type"].startswith("application/json") else r.content


def runs(a: Api, **params: Any) -> dict[str, tuple[str, str | None]]:
    body = get(a, "/v1/runs", "auditor", limit=500, **params)
    return {r["run_id"]: (r["origin"], r["replay_id"]) for r in body["runs"]}


def test_the_runs_list_names_every_runs_origin_and_filters_by_it(replayed: tuple[Api, list[str]]) -> None:
    a, ids = replayed
    every = runs(a)
    assert {every[i] for i in ids} == {("production", None)}
    assert every["claimed"] == ("production", None)  # a publisher's replay_of is a claim
    replays = {rid: o for rid, o in every.items() if o[0] == "replay"}
    assert sorted(replays) == sorted(f"r-1.{i}" for i in ids) and set(replays.values()) == {("replay", "r-1")}
    assert runs(a, origin="replay") == replays == runs(a, replay_id="r-1") == runs(a, origin="all", replay_id="r-1")
    assert set(runs(a, origin="production")) == {*ids, "claimed"}
    assert runs(a, origin="production", replay_id="r-1") == {} == runs(a, replay_id="r-2")


def test_analytics_count_production_runs_unless_asked(replayed: tuple[Api, list[str]]) -> None:
    a, ids = replayed

    def total(**params: Any) -> tuple[int, dict[str, Any]]:
        body = get(a, "/v1/analytics/outcomes", by="workflow", **params)
        return sum(row["runs"] for row in body["rows"]), body

    n, body = total()
    assert n == len(ids) + 1 and (body["origin"], body["replay_id"]) == ("production", None)
    n, body = total(origin="replay")
    assert n == len(ids) and body["origin"] == "replay"
    assert total(replay_id="r-1")[0] == len(ids) and total(replay_id="r-2")[0] == 0
    assert total(origin="all")[0] == 2 * len(ids) + 1
    assert total(origin="compensation")[0] == 0
    assert total(origin="production", replay_id="r-1")[0] == 0  # both must hold: no run does
    by_origin = get(a, "/v1/analytics/cost-per-outcome", by="origin", origin="all")["rows"]
    assert {r["origin"]: r["runs"] for r in by_origin} == {"production": len(ids) + 1, "replay": len(ids)}


def test_bad_origins_are_refused_with_422(replayed: tuple[Api, list[str]]) -> None:
    a, _ = replayed
    for params in ({"origin": "replays"}, {"replay_id": "no spaces"}, {"origin": ""}):
        r = a.client.get("/v1/analytics/outcomes", params=params, headers=a.auth("analyst"))
        assert r.status_code == 422, (params, r.text)
        r = a.client.get("/v1/runs", params=params, headers=a.auth("auditor"))
        assert r.status_code == 422, (params, r.text)


def test_an_export_holds_production_rows_unless_asked_and_names_each_rows_origin(
    replayed: tuple[Api, list[str]],
) -> None:
    a, ids = replayed

    def export(**params: Any) -> dict[str, set[Any]]:
        table = pq.read_table(io.BytesIO(get(a, "/v1/export/events.parquet", "auditor", **params)))
        rows = table.select(["run_id", "origin", "replay_id"]).to_pylist()
        return {"runs": {r["run_id"] for r in rows}, "origins": {(r["origin"], r["replay_id"]) for r in rows}}

    assert export() == {"runs": {*ids, "claimed"}, "origins": {("production", None)}}
    mine = export(replay_id="r-1")
    assert mine == {"runs": {f"r-1.{i}" for i in ids}, "origins": {("replay", "r-1")}}
    assert export(origin="all")["runs"] == {*ids, "claimed", *mine["runs"]}
