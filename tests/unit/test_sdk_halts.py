"""The SDK obeys the kill switches: a halted workflow's run is recorded as cancelled and refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.console.kill_switch import KillSwitches, switches_path
from domain.canonical import loads
from domain.errors import ConfigError
from ingest.errors import WorkflowHaltedError
from ingest.halts import halt_check, is_halted
from ingest.sdk import Publisher
from ingest.simulate import SeqIds, SimClock, run_simulated_agents
from ingest.transport import LedgerTransport
from tests.factories import FakeClock, make_ledger, verify_ledger

ADMIN = "Ari Admin (apikey:0f2ce1b41813)"


@pytest.fixture
def ledger(tmp_path):
    return make_ledger(tmp_path / "ledger.db")


def _publisher(ledger, data_dir) -> Publisher:
    return Publisher(LedgerTransport(ledger), workspace="acme", agent_id="refund-agent", agent_version="1.2.0",
                     clock=SimClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC)), ids=SeqIds("e"),
                     halt_check=halt_check(data_dir))


def _events(ledger, run_id):
    return [loads(r.data)["event"] for r in ledger.store.run_entries("acme", run_id)]


def _halt(data_dir, workflow="refunds", halted=True):
    switches = KillSwitches(switches_path(data_dir), FakeClock(1_800_000_000.0))
    try:
        return switches.flip("acme", workflow, halted, ADMIN, "refunds misfiring, investigating", ledger_index=77)
    finally:
        switches.close()


def test_a_run_of_a_halted_workflow_is_recorded_as_cancelled_with_who_when_why_and_refused(ledger, tmp_path):
    _halt(tmp_path)
    pub = _publisher(ledger, tmp_path)
    body_ran = False
    with pytest.raises(WorkflowHaltedError) as info, pub.run("refunds", run_id="r-halted"):
        body_ran = True
    assert not body_ran  # the agent's code never runs
    err = info.value
    assert err.run_id == "r-halted" and err.halt.by == ADMIN and ADMIN in str(err)
    events = _events(ledger, "r-halted")
    assert [e["type"] for e in events] == ["run.started", "run.completed"]
    assert [e["event_id"] for e in events] == err.event_ids
    done = events[1]["data"]
    assert done["outcome"] == "cancelled"
    assert done["error"] == ("workflow 'refunds' is halted by its kill switch "
                             f"(by {ADMIN} at 2027-01-15T08:00:00Z: refunds misfiring, investigating)")
    assert done["result"] == {"kill_switch": {"by": ADMIN, "at": "2027-01-15T08:00:00Z",
                                              "reason": "refunds misfiring, investigating", "ledger_index": 77}}
    ledger.checkpoint(force=True)
    result = verify_ledger(ledger)
    assert result.ok, result.reason


def test_other_workflows_other_workspaces_and_replays_still_run_and_a_resume_lets_runs_start(ledger, tmp_path):
    _halt(tmp_path)
    pub = _publisher(ledger, tmp_path)
    with pub.run("triage", run_id="r-other"):
        pass
    with pub.run("refunds", run_id="r-replay", replay_of="r-original"):
        pass
    other = Publisher(LedgerTransport(ledger), workspace="globex", agent_id="a", agent_version="1",
                      halt_check=halt_check(tmp_path))
    with other.run("refunds", run_id="r-globex"):
        pass
    _halt(tmp_path, halted=False)
    with pub.run("refunds", run_id="r-resumed"):
        pass
    for run_id in ("r-other", "r-replay", "r-resumed"):
        assert _events(ledger, run_id)[-1]["data"] == {"outcome": "succeeded"}, run_id
    assert loads(ledger.store.run_entries("globex", "r-globex")[-1].data)["event"]["data"]["outcome"] == "succeeded"


def test_an_unreadable_switch_file_refuses_to_start_the_run_and_records_nothing(ledger, tmp_path):
    path = switches_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a sqlite database, " * 200)
    pub = _publisher(ledger, tmp_path)
    with pytest.raises(ConfigError, match="kill switch file"), pub.run("refunds", run_id="r-x"):
        pytest.fail("the run must not start when the switches cannot be read")
    assert ledger.store.size() == 0


def test_simulated_services_count_refused_runs_of_a_halted_workflow_and_publish_every_event(ledger, tmp_path):
    _halt(tmp_path, workflow="invoice-matching")
    transports: list[LedgerTransport] = []

    def transport() -> LedgerTransport:
        transports.append(LedgerTransport(ledger, batch_size=50))
        return transports[-1]

    summary = run_simulated_agents("unused:0", "unused", runs=9, seed=5, transport_factory=transport,
                                   halt_check=halt_check(tmp_path))
    assert summary.halted == {"invoice-matching": 3} and summary.by_workflow["invoice-matching"] == 3
    assert sum(t.accepted for t in transports) == summary.events == ledger.store.size()
    halted_runs = {r.run_id for r in ledger.store.entries() if r.event_type == "run.completed"
                   and b"halted by its kill switch" in r.data}
    assert len(halted_runs) == 3
    assert is_halted(tmp_path, "acme", "ticket-triage") is None
