"""The agent runtime obeys kill switches: read from the ledger's records (embedded) or over HTTP,
a halted run is refused or stopped at its next step, recorded as cancelled with who, when, why
and the record; halts that cannot be read stop the run (fail closed)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from api.halts import HaltService
from api.keys_store import ApiKey
from ingest.embedded import LedgerTransport
from tachograph.platform import HttpPlatform
from tachograph.runtime import Runtime
from tachograph.tools import ToolRegistry
from tests.factories import FakeClock, make_ledger, verify_ledger
from tests.unit.runtime_support import MODEL, START, FixedModel, agent, events, models, runtime

ADMIN = ApiKey("0f2ce1b41813", "acme", "admin", "2026-01-01T00:00:00Z", None, None, "Ari Admin")
BY = "Ari Admin (apikey:0f2ce1b41813)"


@pytest.fixture
def ledger(tmp_path):
    return make_ledger(tmp_path / "ledger.db")


@pytest.fixture
def service(ledger):
    return HaltService(ledger, FakeClock(1_800_000_000.0))


def noop(ctx, input):
    return {"ran": True}


def test_a_run_of_a_halted_workflow_is_recorded_as_cancelled_with_who_when_why_and_never_runs(ledger, service):
    index = service.set(ADMIN, "workflow", "refunds", "refunds misfiring, investigating").record_index
    ran: list[bool] = []

    def refunds(ctx, input):
        ran.append(True)
        return {}

    with runtime(ledger) as rt:
        result = rt.run(agent(refunds), run_id="r-halted")
    assert not ran and result.halted  # the agent's code never runs
    stored = events(ledger, "r-halted")
    assert [e["type"] for e in stored] == ["run.started", "run.completed"]
    assert stored[1]["data"]["outcome"] == "cancelled"
    assert stored[1]["data"]["error"] == ("workflow 'refunds' is halted by its kill switch "
                                          f"(by {BY} at 2027-01-15T08:00:00Z: refunds misfiring, investigating)")
    assert stored[1]["data"]["result"] == {"kill_switch": {
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
    with runtime(ledger) as rt:
        halted = rt.run(agent(noop), run_id="r-1")
        assert halted.halted and halted.result is not None
        assert (halted.result["kill_switch"]["scope"], halted.result["kill_switch"]["target"]) == (scope, target or "acme")
        if spared is None:  # a workspace halt stops every run of the workspace
            other = rt.run(agent(noop, workflow="triage", identity={"id": "other-agent", "version": "1"}), run_id="r-2")
            assert other.halted
            return
        agent_id, workflow, run_id = spared
        kept = rt.run(agent(noop, workflow=workflow, identity={"id": agent_id, "version": "1"}), run_id=run_id)
    assert events(ledger, run_id)[-1]["data"] == {"outcome": "succeeded", "result": {"ran": True}}
    assert not kept.halted


def test_other_workflows_and_workspaces_still_run_and_a_clear_lets_runs_start_again(ledger, service):
    service.set(ADMIN, "workflow", "refunds", "misfiring")
    with runtime(ledger) as rt:
        assert rt.run(agent(noop, workflow="triage"), run_id="r-other").outcome == "succeeded"
        assert rt.run(agent(noop), run_id="r-stopped").halted
    with runtime(ledger, "globex") as rt:
        assert rt.run(agent(noop), run_id="r-globex").outcome == "succeeded"
    service.clear(ADMIN, "workflow", "refunds", "fixed")
    with runtime(ledger) as rt:
        assert rt.run(agent(noop), run_id="r-resumed").outcome == "succeeded"
    assert events(ledger, "r-globex", "globex")[-1]["data"]["outcome"] == "succeeded"


def test_a_halt_set_while_a_run_goes_stops_it_at_its_next_step_before_the_tool_runs(ledger, service):
    ran: list[str] = []
    tools = ToolRegistry()
    tools.register("crm.lookup", lambda args: ran.append("lookup") or {"id": args["id"]}, "read")
    tools.register("billing.refund", lambda args: ran.append("refund"), "write")

    def billing(ctx, input):
        ctx.tool("crm.lookup", {"id": 1})
        service.set(ADMIN, "agent", "billing/../agent", "agent misbehaves")  # a person, meanwhile
        ctx.tool("billing.refund", {"id": 1})
        return {}

    with runtime(ledger) as rt:
        result = rt.run(agent(billing, tools, identity={"id": "billing/../agent", "version": "1"}), run_id="r-live")
    assert ran == ["lookup"]  # the side-effecting tool never ran
    stored = events(ledger, "r-live")
    assert [e["type"] for e in stored] == ["run.started", "tool.called", "run.completed"]
    assert stored[-1]["data"]["outcome"] == "cancelled"
    assert stored[-1]["data"]["result"]["kill_switch"]["target"] == "billing/../agent"
    assert result.halted and result.events == stored


def test_a_halt_stops_the_run_before_its_next_model_call_reaches_the_model(ledger, service):
    model = FixedModel()

    def chatty(ctx, input):
        ctx.llm("first")
        service.set(ADMIN, "run", ctx.run_id, "runaway")
        ctx.llm("second")
        return {}

    with runtime(ledger, model=model) as rt:
        result = rt.run(agent(chatty), run_id="r-model")
    assert len(model.calls) == 1 and result.halted
    assert [e["type"] for e in events(ledger, "r-model")] == ["run.started", "model.called", "run.completed"]


def _dead_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_halts_that_cannot_be_read_stop_the_run_before_its_code_runs(ledger):
    ran: list[bool] = []
    platform = HttpPlatform(f"http://127.0.0.1:{_dead_port()}", "tacho_000000000000_x", timeout_s=2)
    rt = Runtime(workspace="acme", transport=LedgerTransport(ledger), platform=platform, models=models(),
                 model=MODEL, clock=FakeClock(START), halts_grace_s=0.3, sleep=lambda s: None)
    with rt:
        result = rt.run(agent(lambda ctx, input: ran.append(True) or {}), run_id="r-x")
    assert not ran
    assert result.outcome == "failed" and "the kill switches could not be checked" in result.error
    assert [e["type"] for e in events(ledger, "r-x")] == ["run.started", "run.completed"]


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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ran: list[int] = []
    tools = ToolRegistry()
    tools.register("step", lambda args: ran.append(args["n"]), "write")

    def steps(ctx, input):
        ctx.tool("step", {"n": 1})
        server.shutdown()
        server.server_close()
        ctx.tool("step", {"n": 2})  # a write: the halts are read fresh, and cannot be
        return {}

    platform = HttpPlatform(f"http://127.0.0.1:{server.server_address[1]}", "tacho_000000000000_x", timeout_s=2)
    rt = Runtime(workspace="acme", transport=LedgerTransport(ledger), platform=platform, models=models(),
                 model=MODEL, clock=FakeClock(START), halts_grace_s=0.3)
    with rt:
        result = rt.run(agent(steps, tools), run_id="r-lost")
    assert ran == [1] and result.outcome == "failed"
    stored = events(ledger, "r-lost")
    assert [e["type"] for e in stored] == ["run.started", "tool.called", "run.completed"]
    assert stored[-1]["data"]["outcome"] == "failed"
    assert "the kill switches could not be checked" in stored[-1]["data"]["error"]
