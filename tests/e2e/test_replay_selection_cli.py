"""``tacho replay`` on a workflow as `make demo` leaves it (runtime runs beside the simulated
services' runs): the code comes from the runs' entry point, other code's runs are reported as
not replayable; ``--steps`` step-replays every run's model calls, stored like any replay."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from api.bootstrap import build_ledger
from api.cli import build_app
from api.settings import Settings
from replay.demo import record_examples
from tests.factories import append_deciding, workload_events

AGENT = "examples.triage:triage"


def _ledger_as_after_the_demo() -> None:
    from examples import triage

    ledger = build_ledger(Settings())
    record_examples(ledger, "acme", AGENT, triage.inputs(6, salt="sel"), prefix="live")
    append_deciding(ledger, workload_events(runs=10, seed=4))  # simulated services: no entry point
    ledger.store.close()


def test_replay_takes_the_recorded_code_and_reports_other_code(tmp_path, monkeypatch):
    monkeypatch.setenv("TACHO_DATA_DIR", str(tmp_path / "data"))
    _ledger_as_after_the_demo()
    app, runner = build_app(), CliRunner()

    out = runner.invoke(app, ["replay", "--workflow", "ticket-triage", "--id", "fid", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["agent"] == AGENT and report["summary"]["statuses"] == {"reproduced": 6}
    skipped = report["not_replayable"]
    assert skipped and {n["kind"] for n in skipped} == {"no-entry-point"}
    assert report["summary"]["not_replayable"] == len(skipped)

    shown = runner.invoke(app, ["replay", "show", "fid"])
    assert shown.exit_code == 0 and f"{len(skipped)} run(s) not replayable by {AGENT}" in shown.stdout

    again = runner.invoke(app, ["replay", "--workflow", "ticket-triage", "--id", "fid2", "--json"])
    assert json.loads(again.stdout)["summary"]["runs"] == 6  # the first replay's runs are not taken


def test_step_replay_of_every_production_run_stored_and_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("TACHO_DATA_DIR", str(tmp_path / "data"))
    _ledger_as_after_the_demo()
    app, runner = build_app(), CliRunner()

    out = runner.invoke(app, ["replay", "--steps", "--model", "sim-large-v2", "--workflow", "ticket-triage",
                              "--max-response-change", "100%", "--id", "st", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    s = report["summary"]
    assert report["mode"] == "steps" and report["candidate"] == "model=sim-large-v2"
    assert s["runs"] > 6 and s["replayed_calls"] > 0 and s["compared_calls"] > 0
    assert s["model_calls"] == s["replayed_calls"] + s["unreplayable_calls"]
    assert s["before"]["cost_usd"] is not None and s["after"]["cost_usd"] is not None

    shown = runner.invoke(app, ["replay", "show", "st", "--json"])
    stored = json.loads(shown.stdout)
    assert stored["summary"] == report["summary"] and stored["runs"] == report["runs"]
    text = runner.invoke(app, ["replay", "show", "st"])
    assert text.exit_code == 0 and "step replay st" in text.stdout and "response change rate" in text.stdout
    listed = json.loads(runner.invoke(app, ["replay", "list", "--json"]).stdout)
    assert [r["mode"] for r in listed] == ["steps"]

    strict = runner.invoke(app, ["replay", "--steps", "--model", "sim-large-v2", "--workflow", "ticket-triage",
                                 "--max-response-change", "0", "--json"])
    assert strict.exit_code == 1 and json.loads(strict.stdout)["gate"]["failures"]


def test_step_replay_refuses_what_it_cannot_judge(tmp_path, monkeypatch):
    monkeypatch.setenv("TACHO_DATA_DIR", str(tmp_path / "data"))
    _ledger_as_after_the_demo()
    app, runner = build_app(), CliRunner()
    outcome = runner.invoke(app, ["replay", "--steps", "--model", "sim-large-v2", "--workflow", "ticket-triage",
                                  "--max-outcome-change", "5%"])
    assert outcome.exit_code == 2 and "not outcomes" in outcome.output
    no_model = runner.invoke(app, ["replay", "--steps", "--workflow", "ticket-triage"])
    assert no_model.exit_code == 2 and "--model" in no_model.output
    full = runner.invoke(app, ["replay", "--workflow", "ticket-triage", "--max-response-change", "5%"])
    assert full.exit_code == 2 and "only a step replay" in full.output
