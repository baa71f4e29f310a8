"""``tacho replay``: fidelity check, what-if with a release gate, estimate, show and list."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from api.bootstrap import build_ledger
from api.cli import build_app
from api.settings import Settings
from replay.demo import record_examples

AGENT = "examples.triage:triage"


def _record(n: int = 15) -> int:
    """Record ``n`` live triage runs through the agent runtime into the data dir's ledger (the
    demo's stand-in person decides their approvals through the platform); the ledger's size."""
    from examples import triage

    ledger = build_ledger(Settings())
    record_examples(ledger, "acme", AGENT, triage.inputs(n, salt="cli"), prefix="cli")
    return ledger.store.size()


def test_replay_cli_checks_fidelity_gates_a_candidate_and_stores_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("TACHO_DATA_DIR", str(tmp_path / "data"))
    before = _record()
    runner = CliRunner()
    app = build_app()

    ok = runner.invoke(app, ["replay", "--workflow", "ticket-triage", "--agent", AGENT, "--id", "fid", "--json"])
    assert ok.exit_code == 0, ok.output
    fid = json.loads(ok.stdout)
    assert fid["mode"] == "fidelity" and fid["summary"]["statuses"] == {"reproduced": 15}

    gated = runner.invoke(app, ["replay", "--workflow", "ticket-triage", "--agent", AGENT, "--model",
                                "sim-large-v2", "--max-cost-increase", "50%", "--id", "cand", "--json"])
    assert gated.exit_code == 1, gated.output
    cand = json.loads(gated.stdout)
    assert cand["gate"]["failures"] and cand["gate"]["failures"][0].startswith("cost increase")
    assert Settings().sqlite_path.exists()
    assert build_ledger(Settings()).store.size() == before + fid["recorded"]["accepted"] + cand["recorded"]["accepted"]

    est = runner.invoke(app, ["replay", "--workflow", "ticket-triage", "--agent", AGENT, "--model",
                              "sim-large-v2", "--estimate", "--json"])
    assert est.exit_code == 0, est.output
    assert json.loads(est.stdout)["runs"] == 15  # replays themselves are not replayed again

    shown = runner.invoke(app, ["replay", "show", "cand", "--json"])
    assert json.loads(shown.stdout)["summary"] == cand["summary"]
    listed = json.loads(runner.invoke(app, ["replay", "list", "--json"]).stdout)
    assert [r["replay_id"] for r in listed] and {r["replay_id"] for r in listed} == {"fid", "cand"}
    missing = runner.invoke(app, ["replay", "show", "nope"])
    assert missing.exit_code != 0


def test_replay_cli_names_a_bad_agent_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("TACHO_DATA_DIR", str(tmp_path / "data"))
    _record(1)
    result = CliRunner().invoke(build_app(), ["replay", "--workflow", "ticket-triage", "--agent", "examples.nope:x"])
    assert result.exit_code != 0
    assert "cannot import 'examples.nope'" in str(result.exception) + result.output
