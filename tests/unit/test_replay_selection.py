"""Which runs a full replay takes: production runs only, recorded by the agent code it loads.

A workflow's runs recorded by other code (the workload generator's simulated services, an OTLP
app, another entry point) are reported as not replayable by this agent, never as
non-deterministic; runs recorded by another version of the same entry point replay, and the
report shows both versions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from examples import triage
from ingest.embedded import StandInApprover, embedded_runtime
from replay.demo import DEMO_APPROVER, demo_policy
from replay.engine import ReplayConfig, run_replay
from replay.history import RecordedRun, load_runs
from replay.selection import recorded_entry_point, select_runs
from tachograph.agents import AgentSpec, load_agent
from tachograph.builder import RunLog, RunSpec, seq_event_id
from tachograph.context import Context
from tachograph.models import ModelRegistry
from tests.factories import FakeClock, append_deciding, make_ledger, workload_events

REF = "examples.triage:triage"


def other_triage(ctx: Context, input: Mapping[str, Any]) -> dict[str, Any]:
    """Another team's agent on the same workflow."""
    return {"category": ctx.llm(f"Category of: {input['text']}").content}


def old_triage(ctx: Context, input: Mapping[str, Any]) -> dict[str, Any]:
    """What version 2.9.0 of the triage agent did: one more model call first."""
    ctx.llm("Is this spam?")
    return triage.triage(ctx, dict(input))


def _record(ledger, spec: AgentSpec, inputs: Sequence[Mapping[str, Any]], prefix: str) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(len(inputs))]
    with StandInApprover(ledger, "acme", DEMO_APPROVER, demo_policy), \
            embedded_runtime(ledger, "acme", clock=ledger.clock, event_ids=seq_event_id, models=ModelRegistry(),
                             model="sim-small-v1", approval_timeout_s=30) as rt:
        for run_id, inp in zip(ids, inputs, strict=True):
            rt.run(spec, inp, run_id=run_id)
    return ids


def _otlp_run(ledger) -> None:
    spec = RunSpec("acme", "otel-trace-1", "ticket-triage", {"id": "triage-svc", "version": "2.4.0"},
                   labels={"source": "otlp"})
    log = RunLog(spec)
    log.build("run.started", spec.started_data(), "2026-01-01T00:00:00Z")
    log.build("run.completed", {"outcome": "succeeded"}, "2026-01-01T00:00:01Z")
    append_deciding(ledger, log.events)


@pytest.fixture
def ledger(tmp_path):
    """A ticket-triage workflow as `make demo` leaves it, and more: runs of today's triage code,
    of its previous version, of the workload generator (no entry point), of another agent, an
    OTLP run, and a fidelity replay of today's runs recorded in the ledger."""
    ledger = make_ledger(tmp_path / "ledger.db", clock=FakeClock(), approval_decisions="person")
    current = load_agent(REF)
    _record(ledger, current, triage.inputs(3, salt="now"), "now")
    old = replace(current, fn=old_triage, identity={"id": "triage-agent", "version": "2.9.0"})
    _record(ledger, old, triage.inputs(2, salt="old"), "old")
    append_deciding(ledger, workload_events(runs=12, seed=4))
    other = AgentSpec("tests.unit.test_replay_selection:other_triage", other_triage, current.tools, {},
                      "ticket-triage", {"id": "other-triage", "version": "1.0.0"})
    _record(ledger, other, triage.inputs(1, salt="other"), "other")
    _otlp_run(ledger)
    now = load_runs(ledger.store, run_ids=["now-0", "now-1", "now-2"])
    run_replay(now, current, ReplayConfig("rp-earlier", "2026-01-01T00:00:00Z"), ModelRegistry(), ledger=ledger)
    return ledger


def test_only_production_runs_of_the_workflow_are_loaded(ledger):
    runs = load_runs(ledger.store, workflow="ticket-triage")
    assert all(r.origin == "production" for r in runs)
    assert not any(r.run_id.startswith("rp-earlier") for r in runs)
    assert any(r.run_id.startswith("rp-earlier") for r in load_runs(ledger.store, origins=None))


def test_runs_of_other_code_are_not_replayable_by_this_agent_with_the_reason(ledger):
    runs = load_runs(ledger.store, workflow="ticket-triage")
    selection = select_runs(runs, load_agent(REF))
    assert [r.run_id for r in selection.runs] == ["now-0", "now-1", "now-2", "old-0", "old-1"]
    kinds = {n.run_id: n.kind for n in selection.not_replayable}
    workload = [r.run_id for r in runs if r.run_id.startswith("run-")]
    assert workload, "the workload generator wrote ticket-triage runs"
    assert kinds == {**{w: "no-entry-point" for w in workload}, "other-0": "other-entry-point",
                     "otel-trace-1": "no-entry-point"}
    reasons = {n.run_id: n.reason for n in selection.not_replayable}
    assert reasons["other-0"] == f"recorded by agent code tests.unit.test_replay_selection:other_triage, not {REF}"
    assert reasons["otel-trace-1"].startswith("ingested over OTLP") and "--steps" in reasons["otel-trace-1"]
    assert "without an entry point" in reasons[workload[0]]


def test_a_fidelity_replay_reports_other_code_apart_and_its_gate_ignores_it(ledger):
    runs = load_runs(ledger.store, workflow="ticket-triage")
    agent = load_agent(REF)
    selection = select_runs(runs, agent)
    report = run_replay(selection.runs, agent, ReplayConfig("rp-sel", "2026-01-02T00:00:00Z"), ModelRegistry(),
                        not_replayable=selection.not_replayable)
    statuses = {r["run_id"]: r["status"] for r in report["runs"]}
    assert statuses == {"now-0": "reproduced", "now-1": "reproduced", "now-2": "reproduced",
                        "old-0": "nondeterministic", "old-1": "nondeterministic"}
    s = report["summary"]
    assert s["not_replayable"] == len(selection.not_replayable) > 0
    assert s["not_replayable_reasons"]["other-entry-point"] == 1
    assert s["agent_version"] == "3.0.0" and s["recorded_versions"] == {"2.9.0": 2, "3.0.0": 3}
    assert s["other_version_runs"] == 2
    assert {r["run_id"]: r["recorded_version"] for r in report["runs"]}["old-0"] == "2.9.0"
    [failure] = report["gate"]["failures"]
    assert failure.startswith("2 run(s) did not reproduce their recording (2 of them recorded by another "
                              "agent version than 3.0.0")
    only_now = select_runs(runs, agent, limit=3)
    passed = run_replay(only_now.runs, agent, ReplayConfig("rp-now", "2026-01-02T00:00:00Z"), ModelRegistry(),
                        not_replayable=only_now.not_replayable)
    assert passed["gate"]["passed"] and passed["summary"]["other_version_runs"] == 0


def test_the_code_defaults_to_the_newest_runs_entry_point(ledger):
    runs = load_runs(ledger.store, workflow="ticket-triage")
    assert recorded_entry_point(runs) == "tests.unit.test_replay_selection:other_triage"
    assert recorded_entry_point([r for r in runs if not r.run_id.startswith("other")]) == REF
    assert recorded_entry_point([r for r in runs if r.entry_point is None]) is None


def test_a_replay_named_by_id_is_reported_as_not_production(ledger):
    runs = load_runs(ledger.store, run_ids=["rp-earlier.now-0", "now-0"])
    selection = select_runs(runs, load_agent(REF))
    assert [r.run_id for r in selection.runs] == ["now-0"]
    [skipped] = selection.not_replayable
    assert skipped.kind == "not-production" and skipped.reason == "a replay of now-0, not a production run"


@pytest.mark.parametrize(("kind", "data", "origin"), [
    ("kafka", {"workflow": "w"}, "production"),
    ("http", {"workflow": "w", "replay_of": "r1"}, "production"),  # a publisher's claim is not a replay
    ("replay", {"workflow": "w", "replay_of": "r1", "labels": {"replay.id": "rp"}}, "replay"),
    ("audit", {"workflow": "tachograph.audit"}, "audit"),
    ("console", {"workflow": "console.revert", "labels": {"reverts_run": "r1", "reverts_change": "c1"}},
     "compensation"),
])
def test_a_recorded_runs_origin_is_who_wrote_its_run_started(kind, data, origin):
    run = RecordedRun("acme", "r9", [{"type": "run.started", "seq": 0, "data": data}], source_kind=kind)
    assert run.origin == origin
