"""Reverting a change: always as a compensating run of its own, never inside the agent's run."""

from __future__ import annotations

import re

import pytest

from api.app import create_app
from api.console.actions import CONSOLE_AGENT, ConsoleActionError, revert
from api.console.board import Board
from api.console.compensation import revert_run_id
from api.keys_store import KeyStore
from api.settings import Settings
from domain.ports import Incoming, Source
from tachograph.contract.canonical import dumps, loads
from tests.factories import FakeClock, event, make_ledger, verify_ledger

WS = "acme"


def _run(run_id: str, change_id: str, *, completed: bool, reversible: bool = True) -> list[dict]:
    evs = [
        event(run_id, 0, "run.started", {"workflow": "billing-ops", "mode": "execute", "risk_tier": "high"}),
        event(run_id, 1, "change.proposed", {"change_id": change_id, "target": f"billing.invoice/{run_id}",
                                             "before": {"status": "open", "amount": "120.00"},
                                             "after": {"status": "void", "amount": "120.00"},
                                             "reversible": reversible}),
        event(run_id, 2, "change.applied", {"change_id": change_id}),
    ]
    if completed:
        evs.append(event(run_id, 3, "run.completed", {"outcome": "succeeded"}))
    return evs


@pytest.fixture
def console(tmp_path):
    """A console over a ledger with a completed run and an open run, each with an applied change."""
    clock = FakeClock(1_800_000_000.0)
    ledger = make_ledger(tmp_path / "ledger.db")
    evs = [*_run("done", "ch-1", completed=True), *_run("open", "ch-2", completed=False),
           *_run("done-fixed", "ch-3", completed=True, reversible=False)]
    assert ledger.append([Incoming(dumps(e), Source(kind="file", name="t")) for e in evs]).accepted == len(evs)
    keys = KeyStore(tmp_path / "keys.db", clock)
    _, secret = keys.create(WS, "approver", label="Pat Approver")
    app = create_app(Settings(data_dir=tmp_path / "data"), ledger=ledger, keys=keys, clock=clock)
    state, services = app.state.console, app.state.services
    _, session = state.sessions.sign_in(secret)
    yield state, services, session


def _events(ledger, run_id):
    return [loads(r.data)["event"] for r in ledger.store.run_entries(WS, run_id)]


def _verify(ledger):
    ledger.checkpoint(force=True)
    return verify_ledger(ledger)


def test_reverting_a_change_of_a_completed_run_records_one_compensating_run_and_the_ledger_verifies(console):
    state, services, session = console
    ledger = services.ledger
    before_original = _events(ledger, "done")
    seen: list[tuple[str, int]] = []

    def hook(change, by, reason):
        seen.append((change.change_id, ledger.store.size()))  # called before anything is appended

    size = ledger.store.size()
    change = state.board.change(WS, "done", "ch-1")
    done = revert(services, session, change, "billing-ops", {"billing-ops": hook}, "voided the wrong invoice")

    assert done.compensating_run == "done.revert-ch-1" and seen == [("ch-1", size)]
    assert _events(ledger, "done") == before_original  # the completed run is left as it was
    evs = _events(ledger, "done.revert-ch-1")
    assert [e["type"] for e in evs] == ["run.started", "change.proposed", "change.applied", "run.completed"]
    assert [e["seq"] for e in evs] == [0, 1, 2, 3] and {e["agent"]["id"] for e in evs} == {CONSOLE_AGENT["id"]}
    assert evs[0]["data"] == {
        "workflow": "console.revert", "mode": "execute", "risk_tier": "high",
        "input": {"run_id": "done", "change_id": "ch-1", "reason": "voided the wrong invoice",
                  "workflow": "billing-ops"},
        "labels": {"reverts_run": "done", "reverts_change": "ch-1"}}
    assert evs[1]["data"] == {"change_id": "ch-1.revert", "target": "billing.invoice/done",
                              "before": {"status": "void", "amount": "120.00"},
                              "after": {"status": "open", "amount": "120.00"}, "reversible": False}
    assert evs[2]["data"] == {"change_id": "ch-1.revert"}
    assert evs[3]["data"] == {"outcome": "succeeded", "result": {
        "reverted_run": "done", "reverted_change": "ch-1", "by": session.identity}}
    rows = ledger.store.run_entries(WS, "done.revert-ch-1")
    assert [r.index for r in rows] == list(range(rows[0].index, rows[0].index + 4))  # one append, in order
    assert done.index == rows[0].index
    result = _verify(ledger)
    assert result.ok, result.reason

    original = state.board.change(WS, "done", "ch-1")
    assert original.reverted == evs[3]["time"] and original.reverted_by == session.identity
    assert original.revert_run == "done.revert-ch-1" and original.revert_reason == "voided the wrong invoice"
    assert state.board.change(WS, "done.revert-ch-1", "ch-1.revert").compensates == ("done", "ch-1")
    audit = [loads(r.data)["record"]["data"] for r in ledger.store.records(WS, record_type="console.action")]
    assert audit[-1]["action"] == "console.change.revert"
    assert audit[-1]["target"]["compensating_run"] == "done.revert-ch-1"


def test_a_second_revert_of_a_completed_runs_change_is_refused_and_writes_nothing(console):
    state, services, session = console
    ledger = services.ledger
    stale = state.board.change(WS, "done", "ch-1")  # read before the first revert (another tab)
    revert(services, session, stale, "billing-ops", {}, None)
    size = ledger.store.size()
    with pytest.raises(ConsoleActionError, match="already reverted"):
        revert(services, session, state.board.change(WS, "done", "ch-1"), "billing-ops", {}, None)
    stale.reverted = None  # as a stale tab still sees it: the writer checks the ledger itself
    calls = []
    with pytest.raises(ConsoleActionError, match=re.escape("compensating run 'done.revert-ch-1'")):
        revert(services, session, stale, "billing-ops", {"billing-ops": lambda *a: calls.append(a)}, None)
    assert calls == [] and ledger.store.size() == size
    assert len(_events(ledger, "done.revert-ch-1")) == 4


def test_a_failing_revert_hook_on_a_completed_run_writes_no_compensating_run(console):
    state, services, session = console
    ledger = services.ledger

    def hook(change, by, reason):
        raise RuntimeError("billing system refused: invoice already paid")

    with pytest.raises(ConsoleActionError, match="already paid"):
        revert(services, session, state.board.change(WS, "done", "ch-1"), "billing-ops", {"billing-ops": hook}, "x")
    assert ledger.store.run_entries(WS, "done.revert-ch-1") == []
    assert state.board.change(WS, "done", "ch-1").reverted is None
    failed = [loads(r.data)["record"]["data"]["action"] for r in ledger.store.records(WS)]
    assert failed[-1] == "console.change.revert_failed"


def test_an_open_runs_change_is_reverted_by_a_compensating_run_and_the_agents_run_is_left_to_the_agent(console):
    state, services, session = console
    ledger = services.ledger
    before = _events(ledger, "open")
    done = revert(services, session, state.board.change(WS, "open", "ch-2"), "billing-ops", {}, "wrong")

    assert done.compensating_run == "open.revert-ch-2"
    assert _events(ledger, "open") == before  # one writer per run: nothing written into the agent's run
    evs = _events(ledger, "open.revert-ch-2")
    assert [e["type"] for e in evs] == ["run.started", "change.proposed", "change.applied", "run.completed"]
    assert {e["agent"]["id"] for e in evs} == {CONSOLE_AGENT["id"]}
    assert evs[0]["data"]["labels"] == {"reverts_run": "open", "reverts_change": "ch-2"}
    assert evs[0]["data"]["input"]["reason"] == "wrong"
    assert evs[1]["data"]["before"] == {"status": "void", "amount": "120.00"}  # the opposite change
    assert evs[3]["data"]["result"] == {"reverted_run": "open", "reverted_change": "ch-2", "by": session.identity}

    # the agent goes on with its own next seq, which the console did not take
    nxt = event("open", 3, "run.completed", {"outcome": "succeeded"})
    report = ledger.append([Incoming(dumps(nxt), Source(kind="http", name="acme/k"))])
    assert report.accepted == 1, report.results
    original = state.board.change(WS, "open", "ch-2")
    assert original.revert_run == "open.revert-ch-2" and original.reverted_by == session.identity
    with pytest.raises(ConsoleActionError, match="already reverted"):
        revert(services, session, original, "billing-ops", {}, None)
    result = _verify(ledger)
    assert result.ok, result.reason


def test_an_irreversible_change_of_a_completed_run_cannot_be_reverted(console):
    state, services, session = console
    size = services.ledger.store.size()
    with pytest.raises(ConsoleActionError, match="irreversible"):
        revert(services, session, state.board.change(WS, "done-fixed", "ch-3"), "billing-ops", {}, None)
    assert services.ledger.store.size() == size


def test_labels_naming_a_reverted_change_count_only_on_runs_the_console_wrote(tmp_path):
    ledger = make_ledger(tmp_path / "ledger.db")
    forged = [
        event("forged", 0, "run.started", {"workflow": "billing-ops", "mode": "execute", "risk_tier": "low",
                                           "labels": {"reverts_run": "done", "reverts_change": "ch-1"}}),
        event("forged", 1, "run.completed", {"outcome": "succeeded", "result": {"by": "mallory"}}),
    ]
    evs = [*_run("done", "ch-1", completed=True), *forged]
    ledger.append([Incoming(dumps(e), Source(kind="http", name="acme/k")) for e in evs])
    board = Board(ledger.store)
    assert board.change(WS, "done", "ch-1").reverted is None


@pytest.mark.parametrize(("run_id", "change_id"), [("r" * 128, "ch-1"), ("run-1", "change with spaces/and:slashes")])
def test_a_compensating_run_id_that_would_be_too_long_or_invalid_is_hash_shortened(run_id, change_id):
    rid = revert_run_id(run_id, change_id)
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", rid) and ".revert-" in rid
    assert rid != revert_run_id(run_id, change_id + "x")
