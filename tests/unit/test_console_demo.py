"""The console stage of the demo: keys per role written once (mode 0600), runs waiting for people."""

from __future__ import annotations

import io
import logging
import os
import time

from rich.console import Console

from api.bootstrap import build_ledger
from api.console.board import Board
from api.console.demo import CONSOLE_URL, PEOPLE, run_console_demo
from api.halts import HaltService
from api.keys_store import ApiKey, KeyStore
from api.settings import Settings
from tachograph.contract.canonical import loads
from tests.factories import FakeClock, verify_ledger


def _out() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=400, highlight=False), buf


def test_the_console_stage_writes_one_key_per_role_once_and_records_real_sdk_runs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = Settings(data_dir=tmp_path / "data")
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
    assert sorted(a.run_id for a in pending) == sorted(demo.pending) and len(pending) == 2
    assert all(board.change("demo", a.run_id, a.change_id) is not None for a in pending)
    applied = {c.run_id: c for c in board.applied("demo")}
    assert set(applied) == set(demo.open_runs) | set(demo.completed)
    assert all(c.reversible and not c.reverted for c in applied.values())
    assert not board.facts("demo", demo.open_runs[0]).completed
    assert board.facts("demo", demo.completed[0]).completed
    agents = {loads(r.data)["event"]["agent"]["id"] for r in ledger.store.entries()}
    sources = {loads(r.data)["source"]["kind"] for r in ledger.store.entries()}
    assert agents == {"billing-agent"} and sources == {"sdk"}
    ledger.checkpoint(force=True)
    result = verify_ledger(ledger)
    assert result.ok, result.reason

    again_out, again_buf = _out()
    again = run_console_demo(settings, ledger, again_out)
    assert not again.created_keys and len(keys.list("demo")) == len(PEOPLE)
    assert not any(s in again_buf.getvalue() for s in secrets.values())  # shown only once
    assert "created by an earlier demo" in again_buf.getvalue()
    assert len(Board(ledger.store).pending("demo", time.time())) == 4


def test_the_console_stage_obeys_a_halted_workflow_and_records_the_refused_runs(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    ledger = build_ledger(settings)
    admin = ApiKey("0f2ce1b41813", "demo", "admin", "2026-01-01T00:00:00Z", None, None, "Ari Admin")
    HaltService(ledger, FakeClock()).set(admin, "workflow", "billing-ops", "investigating")
    out, buf = _out()
    demo = run_console_demo(settings, ledger, out)
    assert len(demo.halted) == 4 and not demo.pending and not demo.open_runs
    assert "kill switch is on" in buf.getvalue()
    outcomes = [loads(r.data)["event"]["data"]["outcome"] for r in ledger.store.entries()
                if r.event_type == "run.completed"]
    assert outcomes == ["cancelled"] * 4
