"""The console stage of the demo: keys per role written once (mode 0600), runs waiting for people."""

from __future__ import annotations

import io
import logging
import os
import time

import pytest
from rich.console import Console

from api.bootstrap import build_ledger
from api.console.board import Board
from api.console.demo import CONSOLE_URL, PEOPLE, run_console_demo
from api.halts import HaltService
from api.keys_store import ApiKey, KeyStore
from api.settings import Settings
from tachograph.contract.canonical import loads
from tests.factories import FakeClock, verify_ledger


def _events(ledger, run_id):
    return [loads(r.data)["event"] for r in ledger.store.run_entries("demo", run_id)]


def _out() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=400, highlight=False), buf


@pytest.mark.parametrize("decisions", ["person", "agent"])
def test_the_console_stage_writes_one_key_per_role_once_and_records_runs_of_the_runtime(tmp_path, caplog, decisions):
    caplog.set_level(logging.DEBUG)
    settings = Settings(data_dir=tmp_path / "data", approval_decisions=decisions)
    ledger = build_ledger(settings)
    out, buf = _out()
    demo = run_console_demo(settings, ledger, out)

    assert demo.keys_path == settings.data_dir / "demo-keys.txt" and demo.created_keys
    assert os.stat(demo.keys_path).st_mode & 0o777 == 0o600
    rows = [line.split("\t") for line in demo.keys_path.read_text().splitlines() if not line.startswith("#")]
    assert [(r[0], r[1]) for r in rows] == list(PEOPLE)
    keys = KeyStore(settings.data_dir / "keys" / "apikeys.db", time.time)
    for role, name, secret in rows:
        key = keys.authenticate(secret)
        assert (key.role, key.label, key.workspace) == (role, name, "demo")
    printed = buf.getvalue()
    secrets = {r[0]: r[2] for r in rows}
    assert printed.count(secrets["approver"]) == 1
    assert not any(secrets[r] in printed for r in secrets if r != "approver")
    assert str(demo.keys_path) in printed and f"run `tacho serve` and open {CONSOLE_URL}" in printed
    assert not any(s in caplog.text for s in secrets.values())  # never in the logs

    board = Board(ledger.store)
    pending = board.pending("demo", time.time())
    waiting = demo.pending + demo.open_runs
    assert sorted(a.run_id for a in pending) == sorted(waiting) and len(pending) == 3
    assert all(board.change("demo", a.run_id, a.change_id) is not None for a in pending if a.run_id in demo.pending)
    applied = {c.run_id: c for c in board.applied("demo")}
    assert set(applied) == set(demo.open_runs) | set(demo.completed)
    assert all(c.reversible and not c.reverted for c in applied.values())
    for run_id in waiting:  # the agent service stopped while it waited: nothing after the request
        events = _events(ledger, run_id)
        assert events[-1]["type"] == "approval.requested" and not board.facts("demo", run_id).completed

    # Pat Approver agreed to the credit note as a person (a decision record), the agent repeated it
    (done,) = demo.completed
    (decided,) = board.decided("demo")
    approver = demo.key_ids["approver"]
    assert (decided.run_id, decided.decision, decided.by) == (done, "approved", f"Pat Approver (apikey:{approver})")
    records = [loads(r.data)["record"] for r in ledger.store.records("demo", limit=100, record_type="approval.decision")]
    assert [(r["data"]["approval_id"], r["actor"]["key_id"]) for r in records] == [(decided.approval_id, approver)]
    events = _events(ledger, done)
    assert [e["type"] for e in events][-4:] == ["approval.requested", "approval.decided", "tool.called", "run.completed"]
    assert events[-3]["data"]["by"] == decided.by and events[-1]["data"]["outcome"] == "succeeded"

    # every run was made by the runtime over the embedded transport, as the billing agent
    started = [loads(r.data)["event"] for r in ledger.store.entries() if r.event_type == "run.started"]
    assert {e["data"]["entry_point"] for e in started} == {
        "api.console.demo_agent:raise_credit_limit", "api.console.demo_agent:void_invoice"}
    agents = {loads(r.data)["event"]["agent"]["id"] for r in ledger.store.entries() if r.kind == "event"}
    sources = {loads(r.data)["source"]["kind"] for r in ledger.store.entries() if r.kind == "event"}
    assert agents == {"billing-agent"} and sources == {"agent"}
    ledger.checkpoint(force=True)
    result = verify_ledger(ledger)
    assert result.ok, result.reason

    again_out, again_buf = _out()
    again = run_console_demo(settings, ledger, again_out)
    assert not again.created_keys and len(keys.list("demo")) == len(PEOPLE)
    assert not any(s in again_buf.getvalue() for s in secrets.values())  # shown only once
    assert "created by an earlier demo" in again_buf.getvalue()
    assert len(Board(ledger.store).pending("demo", time.time())) == 6


def test_the_console_stage_obeys_a_halted_workflow_and_records_the_refused_runs(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    ledger = build_ledger(settings)
    admin = ApiKey("0f2ce1b41813", "demo", "admin", "2026-01-01T00:00:00Z", None, None, "Ari Admin")
    HaltService(ledger, FakeClock()).set(admin, "workflow", "billing-ops", "investigating")
    out, buf = _out()
    demo = run_console_demo(settings, ledger, out)
    assert len(demo.halted) == 4 and not demo.pending and not demo.open_runs and not demo.completed
    assert "kill switch is on" in buf.getvalue()
    for run_id in demo.halted:  # recorded as started and at once cancelled, with the halt
        events = _events(ledger, run_id)
        assert [e["type"] for e in events] == ["run.started", "run.completed"]
        assert events[1]["data"]["outcome"] == "cancelled"
        assert events[1]["data"]["result"]["kill_switch"]["target"] == "billing-ops"
    assert not ledger.store.records("demo", limit=10, record_type="approval.decision")
