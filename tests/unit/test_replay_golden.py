"""Golden recorded histories replayed with the same agent code (as Temporal replays workflow histories)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from tachograph.agents import load_agent
from tachograph.contract.canonical import loads
from tachograph.models import ModelRegistry
from tests.factories import FakeClock, append_deciding, make_ledger

GOLDEN = Path(__file__).parent.parent / "golden"

CASES = [
    # (file, agent, expected status of every run, first differing seq or None)
    ("triage.jsonl", "examples.triage:triage", "reproduced", None),
    ("invoices.jsonl", "examples.invoices:match_invoice", "reproduced", None),
    ("triage-nondeterministic.jsonl", "examples.triage:triage", "nondeterministic", 4),
]


def _golden_events(name: str) -> list[dict]:
    return [loads(line) for line in (GOLDEN / name).read_bytes().splitlines() if line.strip()]


def _ledger(path: Path, events: list[dict]):
    """A ledger that requires a person's decision behind every approval, holding the recording
    (each recorded decision backed by the person's decision record it repeats). A replay's
    ``approval.decided`` is accepted there because it names, in ``replayed_from``, the recorded
    approval whose person's decision it repeats."""
    ledger = make_ledger(path, clock=FakeClock(), approval_decisions="person")
    report = append_deciding(ledger, events)
    assert report.accepted == len(events)
    decisions = sum(1 for e in events if e["type"] == "approval.decided" and "replayed_from" not in e["data"])
    assert ledger.store.size() == len(events) + decisions  # each decision is a platform record beside the events
    return ledger, decisions


@pytest.mark.parametrize(("name", "ref", "status", "seq"), CASES, ids=[c[0] for c in CASES])
def test_golden_history_replays_with_the_expected_fidelity(tmp_path, name, ref, status, seq):
    events = _golden_events(name)
    ledger, decisions = _ledger(tmp_path / "ledger.db", events)
    runs = load_runs(ledger.store, workflow=load_agent(ref).workflow)
    assert runs, "the golden file holds finished runs"

    report = run_replay(runs, load_agent(ref), ReplayConfig("golden-check", "2026-11-01T00:00:00Z"),
                        ModelRegistry(), ledger=ledger)

    assert {r["status"] for r in report["runs"]} == {status}
    if seq is None:
        assert report["gate"]["passed"]
        assert all(r["first_divergence"] is None for r in report["runs"])
        assert report["summary"]["before"] == report["summary"]["after"]
    else:
        div = report["runs"][0]["first_divergence"]
        assert div["seq"] == seq
        assert div["expected"] != div["actual"]
        assert not report["gate"]["passed"]
    # every replay event went through the ledger and nothing was quarantined
    assert report["recorded"]["quarantined"] == 0, report["recorded"]["problems"]
    assert report["recorded"]["accepted"] > 0
    assert ledger.store.size() == len(events) + decisions + report["recorded"]["accepted"]


def test_the_golden_histories_hold_person_decided_approvals_with_workspace_unique_ids():
    events = _golden_events("triage.jsonl") + _golden_events("invoices.jsonl")
    asked = [e for e in events if e["type"] == "approval.requested"]
    decided = [e for e in events if e["type"] == "approval.decided"]
    assert asked and decided
    assert all(e["data"]["approval_id"].startswith(e["run_id"] + "/approval-") for e in asked + decided)
    assert {e["data"]["by"] for e in decided} == {"ops@golden.test"}
    started = [e for e in events if e["type"] == "run.started"]
    assert {e["data"]["entry_point"] for e in started} == {
        "examples.triage:triage", "examples.invoices:match_invoice"}


def test_a_reproduced_replay_repeats_every_recorded_event_except_its_identity(tmp_path):
    events = _golden_events("triage.jsonl")
    ledger, _ = _ledger(tmp_path / "ledger.db", events)
    agent = load_agent("examples.triage:triage")
    run_replay(load_runs(ledger.store), agent, ReplayConfig("rp1", "2026-11-01T00:00:00Z"), ModelRegistry(),
               ledger=ledger)
    by_id = {r.run_id: r for r in load_runs(ledger.store, origins=None)}
    for original in [r for r in by_id.values() if r.started.get("replay_of") is None]:
        replayed = by_id[f"rp1.{original.run_id}"]
        assert replayed.started["replay_of"] == original.run_id
        assert replayed.started["labels"]["replay.id"] == "rp1"
        assert replayed.started["entry_point"] == original.started["entry_point"]
        assert len(replayed.events) == len(original.events)
        for a, b in zip(original.events[1:], replayed.events[1:], strict=True):
            assert (a["type"], a["time"]) == (b["type"], b["time"])
            if a["type"] in ("approval.requested", "approval.decided"):
                a_id, b_id = a["data"]["approval_id"], b["data"]["approval_id"]
                assert b_id == replayed.run_id + a_id.removeprefix(original.run_id)
                mine = {k: v for k, v in b["data"].items() if k not in ("approval_id", "replayed_from")}
                assert mine == {k: v for k, v in a["data"].items() if k != "approval_id"}
                if a["type"] == "approval.decided":
                    assert b["data"]["replayed_from"] == a_id
            else:
                assert a["data"] == b["data"]
