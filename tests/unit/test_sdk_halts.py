"""The SDK obeys halts read from the ledger's records (the embedded mode): a halted run is
refused or stopped at its next step, recorded as cancelled with who, when, why and the record."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from api.halts import HaltService
from api.keys_store import ApiKey
from ingest.errors import RunHaltedError
from tachograph.halts import HaltsUnavailableError, HttpHalts
from ingest.halts import LedgerHalts
from ingest.sdk import Publisher
from ingest.simulate import SimClock, run_simulated_agents
from tachograph.transports import LedgerTransport
from tachograph.contract.canonical import loads
from tests.factories import FakeClock, make_ledger, verify_ledger

ADMIN = ApiKey("0f2ce1b41813", "acme", "admin", "2026-01-01T00:00:00Z", None, None, "Ari Admin")
BY = "Ari Admin (apikey:0f2ce1b41813)"


@pytest.fixture
def ledger(tmp_path):
    return make_ledger(tmp_path / "ledger.db")


@pytest.fixture
def service(ledger):
    return HaltService(ledger, FakeClock(1_800_000_000.0))


def _publisher(ledger, workspace="acme", agent_id="refund-agent") -> Publisher:
    return Publisher(LedgerTransport(ledger), workspace=workspace, agent_id=agent_id, agent_version="1.2.0",
                     clock=SimClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC)), halts=LedgerHalts(ledger.store))


def _events(ledger, run_id, workspace="acme"):
    return [loads(r.data)["event"] for r in ledger.store.run_entries(workspace, run_id)]


def test_a_run_of_a_halted_workflow_is_recorded_as_cancelled_with_who_when_why_and_refused(ledger, service):
    index = service.set(ADMIN, "workflow", "refunds", "refunds misfiring, investigating").record_index
    pub = _publisher(ledger)
    body_ran = False
    with pytest.raises(RunHaltedError) as info, pub.run("refunds", run_id="r-halted"):
        body_ran = True
    assert not body_ran  # the agent's code never runs
    err = info.value
    assert err.run_id == "r-halted" and err.halt.by == BY and BY in str(err)
    events = _events(ledger, "r-halted")
    assert [e["type"] for e in events] == ["run.started", "run.completed"]
    assert [e["event_id"] for e in events] == err.event_ids
    done = events[1]["data"]
    assert done["outcome"] == "cancelled"
    assert done["error"] == ("workflow 'refunds' is halted by its kill switch "
                             f"(by {BY} at 2027-01-15T08:00:00Z: refunds misfiring, investigating)")
    assert done["result"] == {"kill_switch": {
        "scope": "workflow", "target": "refunds", "by": BY, "at": "2027-01-15T08:00:00Z",
        "reason": "refunds misfiring, investigating", "ledger_index": index}}
    ledger.checkpoint(force=True)
    result = verify_ledger(ledger)
    assert result.ok, result.reason


@pytest.mark.parametrize(("scope", "target", "spared"), [
    ("workspace", None, None),
    ("workflow", "refunds", ("refund-agent", "triage", "r-2")),
    ("agent", "refund-agent", ("other-agent", "refunds", "r-2")),
    ("run", "r-1", ("refund-agent", "refunds", "r-2")),
])
def test_each_scope_stops_the_runs_it_names_and_no_other(ledger, service, scope, target, spared):
    service.set(ADMIN, scope, target, "stop")
    with pytest.raises(RunHaltedError) as info, _publisher(ledger).run("refunds", run_id="r-1"):
        pytest.fail("a halted run started")
    assert (info.value.halt.scope, info.value.halt.target) == (scope, target or "acme")
    if spared is None:  # a workspace halt stops every run of the workspace
        with pytest.raises(RunHaltedError), _publisher(ledger, agent_id="other-agent").run("triage", run_id="r-2"):
            pytest.fail("a halted run started")
        return
    agent_id, workflow, run_id = spared
    with _publisher(ledger, agent_id=agent_id).run(workflow, run_id=run_id):
        pass
    assert _events(ledger, run_id)[-1]["data"] == {"outcome": "succeeded"}


def test_other_workflows_other_workspaces_and_replays_still_run_and_a_clear_lets_runs_start(ledger, service):
    service.set(ADMIN, "workflow", "refunds", "misfiring")
    pub = _publisher(ledger)
    with pub.run("triage", run_id="r-other"):
        pass
    with pub.run("refunds", run_id="r-replay", replay_of="r-original"):
        pass
    with _publisher(ledger, workspace="globex").run("refunds", run_id="r-globex"):
        pass
    service.clear(ADMIN, "workflow", "refunds", "fixed")
    with pub.run("refunds", run_id="r-resumed"):
        pass
    for run_id in ("r-other", "r-replay", "r-resumed"):
        assert _events(ledger, run_id)[-1]["data"] == {"outcome": "succeeded"}, run_id
    assert _events(ledger, "r-globex", "globex")[-1]["data"]["outcome"] == "succeeded"


def test_a_halt_set_while_a_run_goes_stops_it_at_its_next_step_before_the_tool_runs(ledger, service):
    pub = _publisher(ledger, agent_id="billing/../agent")
    ran: list[str] = []
    with pytest.raises(RunHaltedError) as info, pub.run("billing", run_id="r-live") as run:
        run.tool_call("crm.lookup", {"id": 1}, fn=lambda id: ran.append("lookup") or {"id": id})
        service.set(ADMIN, "agent", "billing/../agent", "agent misbehaves")
        run.tool_call("billing.refund", {"id": 1}, fn=lambda id: ran.append("refund"), side_effect="write")
        pytest.fail("the run went on past a halt")
    assert ran == ["lookup"]  # the side-effecting tool never ran
    events = _events(ledger, "r-live")
    assert [e["type"] for e in events] == ["run.started", "tool.called", "run.completed"]
    assert events[-1]["data"]["outcome"] == "cancelled"
    assert events[-1]["data"]["result"]["kill_switch"]["target"] == "billing/../agent"
    assert info.value.event_ids == [e["event_id"] for e in events]


def test_a_model_call_recorded_after_a_halt_is_kept_and_the_run_ends_there(ledger, service):
    pub = _publisher(ledger)
    with pytest.raises(RunHaltedError), pub.run("refunds", run_id="r-model") as run:
        service.set(ADMIN, "run", "r-model", "runaway")
        run.model_call(provider="openai", model="gpt-4.1-mini", input_tokens=10, output_tokens=2,
                       cost_usd="0.0001", latency_ms=5)
        pytest.fail("the run went on past a halt")
    assert [e["type"] for e in _events(ledger, "r-model")] == ["run.started", "model.called", "run.completed"]


def test_halts_that_cannot_be_read_refuse_to_start_the_run_and_record_nothing(ledger):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    halts = HttpHalts(f"http://127.0.0.1:{port}", "tacho_000000000000_x", timeout_s=2)
    pub = Publisher(LedgerTransport(ledger), workspace="acme", agent_id="a", agent_version="1", halts=halts)
    with pytest.raises(HaltsUnavailableError, match="cannot read the halts"), pub.run("refunds", run_id="r-x"):
        pytest.fail("the run must not start when the halts cannot be read")
    assert ledger.store.size() == 0


def test_halts_that_stop_answering_during_a_run_end_it_failed_before_the_next_step_runs(ledger):
    class Halts(BaseHTTPRequestHandler):  # a real HTTP server answering GET /v1/halts
        def do_GET(self) -> None:
            body = json.dumps({"workspace": "acme", "etag": '"halts-0"', "halts": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Halts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    halts = HttpHalts(f"http://127.0.0.1:{server.server_address[1]}", "tacho_000000000000_x",
                      max_age_s=0, timeout_s=2)
    pub = Publisher(LedgerTransport(ledger), workspace="acme", agent_id="a", agent_version="1", halts=halts)
    ran: list[int] = []
    with pytest.raises(HaltsUnavailableError), pub.run("refunds", run_id="r-lost") as run:
        run.tool_call("step", {"n": 1}, fn=lambda n: ran.append(n))
        server.shutdown()
        server.server_close()
        run.tool_call("step", {"n": 2}, fn=lambda n: ran.append(n), side_effect="write")
    assert ran == [1]
    events = _events(ledger, "r-lost")
    assert [e["type"] for e in events] == ["run.started", "tool.called", "run.completed"]
    assert events[-1]["data"]["outcome"] == "failed" and "cannot read the halts" in events[-1]["data"]["error"]


def test_simulated_services_count_refused_runs_of_a_halted_workflow_and_publish_every_event(ledger, service):
    service.set(ADMIN, "workflow", "invoice-matching", "investigating")
    transports: list[LedgerTransport] = []

    def transport() -> LedgerTransport:
        transports.append(LedgerTransport(ledger, batch_size=50))
        return transports[-1]

    summary = run_simulated_agents("unused:0", "unused", runs=9, seed=5, transport_factory=transport,
                                   halts=LedgerHalts(ledger.store))
    assert summary.halted == {"invoice-matching": 3} and summary.by_workflow["invoice-matching"] == 3
    assert sum(t.accepted for t in transports) == summary.events == ledger.store.size() - 1  # + the record
    halted_runs = {r.run_id for r in ledger.store.entries() if r.event_type == "run.completed"
                   and b"halted by its kill switch" in r.data}
    assert len(halted_runs) == 3
