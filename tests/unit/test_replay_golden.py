"""Golden recorded histories replayed with the same agent code (as Temporal replays workflow histories)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tachograph.agents import load_agent
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from tachograph.models import ModelRegistry
from tachograph.contract.canonical import loads
from tests.factories import FakeClock, items, make_ledger

GOLDEN = Path(__file__).parent.parent / "golden"

CASES = [
    # (file, agent, expected status of every run, first differing seq or None)
    ("triage.jsonl", "examples.triage:triage", "reproduced", None),
    ("invoices.jsonl", "examples.invoices:match_invoice", "reproduced", None),
    ("triage-nondeterministic.jsonl", "examples.triage:triage", "nondeterministic", 4),
]


def _golden_events(name: str) -> list[dict]:
    return [loads(line) for line in (GOLDEN / name).read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize(("name", "ref", "status", "seq"), CASES, ids=[c[0] for c in CASES])
def test_golden_history_replays_with_the_expected_fidelity(tmp_path, name, ref, status, seq):
    ledger = make_ledger(tmp_path / "ledger.db", clock=FakeClock())
    events = _golden_events(name)
    assert ledger.append(items(events, name)).accepted == len(events)
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
    assert report["recorded"]["quarantined"] == 0
    assert report["recorded"]["accepted"] > 0
    assert ledger.store.size() == len(events) + report["recorded"]["accepted"]


def test_a_reproduced_replay_repeats_every_recorded_event_except_its_identity(tmp_path):
    ledger = make_ledger(tmp_path / "ledger.db")
    events = _golden_events("triage.jsonl")
    ledger.append(items(events))
    agent = load_agent("examples.triage:triage")
    run_replay(load_runs(ledger.store), agent, ReplayConfig("rp1", "2026-11-01T00:00:00Z"), ModelRegistry(),
               ledger=ledger)
    replays = load_runs(ledger.store, include_replays=True)
    by_id = {r.run_id: r for r in replays}
    original = by_id["triage-03"]
    replayed = by_id["rp1.triage-03"]
    assert replayed.started["replay_of"] == "triage-03"
    assert replayed.started["labels"]["replay.id"] == "rp1"
    assert len(replayed.events) == len(original.events)
    for a, b in zip(original.events[1:], replayed.events[1:], strict=True):
        assert (a["type"], a["data"], a["time"]) == (b["type"], b["data"], b["time"])
