"""A run's origin comes from who wrote its run.started, never from what the run says about itself."""

from __future__ import annotations

import typing

import duckdb
import pytest

from api.schemas import OriginName
from domain.origins import (
    ALL,
    AUDIT,
    COMPENSATION,
    DECISION_LOG_SOURCE,
    ORIGINS,
    PLATFORM_SOURCES,
    PRODUCTION,
    REPLAY,
    OriginError,
    OriginSelection,
    RunOrigin,
    origin_of_entry,
    run_origin,
)
from projections.schema import decision_log_sql, origin_sql
from projections.views import origin_condition

REPLAY_START = {"workflow": "wf", "mode": "execute", "risk_tier": "low", "replay_of": "run-1",
                "labels": {"replay.id": "r-7", "replay.mode": "what-if"}}


@pytest.mark.parametrize(("kind", "origin"), [
    ("replay", REPLAY), ("console", COMPENSATION), ("audit", AUDIT),
    ("kafka", PRODUCTION), ("http", PRODUCTION), ("otlp", PRODUCTION), ("file", PRODUCTION),
    ("agent", PRODUCTION), (None, PRODUCTION), ("", PRODUCTION),
])
def test_the_source_kind_the_platform_stored_decides_the_origin(kind: str | None, origin: str) -> None:
    assert run_origin(kind, {"workflow": "wf"}).origin == origin


def test_a_replay_run_names_its_replay_from_its_label() -> None:
    assert run_origin("replay", REPLAY_START) == RunOrigin(REPLAY, "r-7")
    assert origin_of_entry({"event": {"data": REPLAY_START}, "source": {"kind": "replay", "name": "r-7"}}) \
        == RunOrigin(REPLAY, "r-7")


@pytest.mark.parametrize("kind", ["kafka", "http", "otlp", "file", "agent"])
def test_what_a_publisher_claims_never_changes_the_origin(kind: str) -> None:
    # replay_of and replay labels, a compensation's labels, an audit run's workflow: all claims
    claims = [REPLAY_START,
              {"workflow": "console.revert", "labels": {"reverts_run": "r", "reverts_change": "c"}},
              {"workflow": "tachograph.audit", "labels": {"kind": "audit-trail"}}]
    for started in claims:
        assert run_origin(kind, started) == RunOrigin(PRODUCTION, None)


def test_the_sql_rule_agrees_with_the_python_rule_for_every_source_kind() -> None:
    kinds = [*PLATFORM_SOURCES, "kafka", "http", "otlp", "file", "agent", "bench", None]
    con = duckdb.connect()
    for kind in kinds:
        got = con.execute(f"SELECT {origin_sql('?')}", [kind]).fetchone()
        assert got == (run_origin(kind).origin,), kind


def test_a_selection_defaults_to_production_and_a_replay_id_alone_means_replay() -> None:
    assert OriginSelection.parse() == OriginSelection(PRODUCTION, None)
    assert OriginSelection.parse(replay_id="r-7") == OriginSelection(REPLAY, "r-7")
    assert OriginSelection.parse("all", "r-7") == OriginSelection(ALL, "r-7")
    assert OriginSelection.parse("all").matches(RunOrigin(AUDIT))
    assert not OriginSelection.parse().matches(RunOrigin(REPLAY, "r-7"))
    assert OriginSelection.parse(replay_id="r-7").matches(RunOrigin(REPLAY, "r-7"))
    assert not OriginSelection.parse(replay_id="r-7").matches(RunOrigin(REPLAY, "r-8"))


def test_bad_selections_are_refused_naming_the_problem() -> None:
    with pytest.raises(OriginError, match="origin must be one of production, replay, compensation, audit, all"):
        OriginSelection.parse("replays")
    with pytest.raises(OriginError, match="is not a replay id"):
        OriginSelection.parse(replay_id="r 7'; DROP TABLE run_facts")
    with pytest.raises(OriginError, match="a replay id selects replay runs; origin 'production' has none"):
        OriginSelection.parse("production", "r-7")
    # not strict (HTTP filters): kept as asked, and it selects no run at all
    lax = OriginSelection.parse("production", "r-7", strict=False)
    assert not lax.matches(RunOrigin(REPLAY, "r-7")) and not lax.matches(RunOrigin(PRODUCTION))


def test_the_sql_selection_picks_the_same_runs_as_matches() -> None:
    runs = [RunOrigin(PRODUCTION), RunOrigin(REPLAY, "a"), RunOrigin(REPLAY, "b"), RunOrigin(COMPENSATION),
            RunOrigin(AUDIT)]
    con = duckdb.connect()
    con.execute("CREATE TABLE run_facts (n INT, origin VARCHAR, replay_id VARCHAR)")
    con.executemany("INSERT INTO run_facts VALUES (?, ?, ?)",
                    [[n, r.origin, r.replay_id] for n, r in enumerate(runs)])
    for origin in (*ORIGINS, ALL):
        for replay_id in (None, "a", "b"):
            sel = OriginSelection.parse(origin, replay_id, strict=False)
            where = origin_condition(sel) or "true"
            got = [n for (n,) in con.execute(f"SELECT n FROM run_facts WHERE {where} ORDER BY n").fetchall()]
            assert got == [n for n, r in enumerate(runs) if sel.matches(r)], sel


def test_the_api_offers_exactly_the_origins_the_domain_knows() -> None:
    assert typing.get_args(OriginName) == (*ORIGINS, ALL)


def test_describe_says_which_runs_were_counted() -> None:
    assert OriginSelection().describe() == "production runs"
    assert OriginSelection(ALL).describe() == "runs of every origin"
    assert OriginSelection.parse(replay_id="r-7").describe() == "runs of replay r-7"


def test_opas_decision_log_is_production_but_no_agents_run() -> None:
    assert run_origin(DECISION_LOG_SOURCE, {"workflow": "tachograph/decision"}) == RunOrigin(
        PRODUCTION, None, decision_log=True)
    for kind in (*PLATFORM_SOURCES, "kafka", "http", "otlp", "file", "agent", None):
        assert run_origin(kind, {"workflow": "wf"}).decision_log is False, kind
    assert OriginSelection().matches(run_origin(DECISION_LOG_SOURCE))  # its decisions are production's


def test_the_sql_decision_log_rule_needs_every_entry_from_opas_log() -> None:
    con = duckdb.connect()
    for kinds, expected in (([DECISION_LOG_SOURCE] * 3, True), ([DECISION_LOG_SOURCE, "http"], False),
                            (["agent", DECISION_LOG_SOURCE], False), (["kafka"], False),
                            ([None], False), ([DECISION_LOG_SOURCE, None], False)):
        got = con.execute(f"SELECT {decision_log_sql('k')} FROM unnest(?::VARCHAR[]) t(k)", [kinds]).fetchone()
        assert got == (expected,), kinds
        assert (run_origin(kinds[0]).decision_log and all(k == DECISION_LOG_SOURCE for k in kinds)) is expected
