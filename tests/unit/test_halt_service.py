"""Halts are platform records: set and clear write ``halt.set`` / ``halt.cleared``, what is halted
is folded from them (so a new process sees the same), and bad requests write nothing."""

from __future__ import annotations

import pytest

from api.halts import RUN_ID, HaltNotFoundError, HaltRequestError, HaltService
from api.keys_store import ApiKey
from domain.stores.sqlite import SQLiteStore
from ingest.halts import LedgerHalts
from tachograph.contract.canonical import loads
from tachograph.contract.events import Ident
from tests.factories import FakeClock, make_ledger, verify_ledger

ADMIN = ApiKey("0f2ce1b41813", "acme", "admin", "2026-01-01T00:00:00Z", None, None, "Ari Admin")
APPROVER = ApiKey("1a2b3c4d5e6f", "acme", "approver", "2026-01-01T00:00:00Z", None, None, "")
GLOBEX = ApiKey("9f8e7d6c5b4a", "globex", "admin", "2026-01-01T00:00:00Z", None, None, "Gil Globex")


@pytest.fixture
def ledger(tmp_path):
    return make_ledger(tmp_path / "ledger.db")


@pytest.fixture
def service(ledger):
    return HaltService(ledger, FakeClock(1_800_000_000.0))


def _records(ledger, workspace="acme"):
    return [(r.index, loads(r.data)["record"]) for r in ledger.store.records(workspace, limit=1000)]


def test_a_set_and_a_clear_are_records_with_who_when_scope_target_and_reason(ledger, service):
    before = service.current("acme")
    change = service.set(ADMIN, "workflow", "billing/../ops", "  refunds misfiring  ")
    assert change.changed and change.halt.reason == "refunds misfiring"
    assert change.halt.by == "Ari Admin (apikey:0f2ce1b41813)" and change.halt.at == "2027-01-15T08:00:00Z"
    now = service.current("acme")
    assert now.halts == (change.halt,) and now.etag != before.etag
    cleared = service.clear(APPROVER, "workflow", "billing/../ops", None, via="console")
    assert cleared.halt == change.halt and service.current("acme").halts == ()
    (i1, set_rec), (i2, clear_rec) = _records(ledger)
    assert (i1, i2) == (change.record_index, cleared.record_index)
    assert set_rec["type"] == "halt.set" and clear_rec["type"] == "halt.cleared"
    assert set_rec["actor"] == {"key_id": "0f2ce1b41813", "role": "admin", "name": "Ari Admin"}
    assert set_rec["data"] == {"scope": "workflow", "target": "billing/../ops", "reason": "refunds misfiring",
                               "via": "api"}
    assert clear_rec["actor"] == {"key_id": "1a2b3c4d5e6f", "role": "approver"}
    assert clear_rec["data"] == {"scope": "workflow", "target": "billing/../ops", "via": "console",
                                 "set_index": i1}
    ledger.checkpoint(force=True)
    assert verify_ledger(ledger).ok


def test_setting_a_halt_in_force_again_writes_nothing_and_clearing_a_missing_one_is_not_found(ledger, service):
    first = service.set(ADMIN, "run", "r-1", "runaway")
    again = service.set(APPROVER, "run", "r-1", "another reason")
    assert not again.changed and again.record_index is None and again.halt == first.halt
    size = ledger.store.size()
    with pytest.raises(HaltNotFoundError, match="no halt on agent 'a1'"):
        service.clear(ADMIN, "agent", "a1", None)
    assert ledger.store.size() == size


def test_the_halts_are_folded_from_the_ledger_so_a_new_process_sees_them_and_others_changes(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = make_ledger(path)
    service = HaltService(ledger, FakeClock())
    service.set(ADMIN, "workspace", None, "freeze")
    service.set(ADMIN, "agent", "a/1", "why")
    service.set(ADMIN, "workflow", "w", "why")
    service.clear(ADMIN, "workflow", "w", "done")
    service.set(GLOBEX, "run", "r-9", "globex's own")
    reader = LedgerHalts(SQLiteStore(path))  # another process's view of the same ledger
    seen = reader.current("acme")
    assert [(h.scope, h.target) for h in seen.halts] == [("workspace", "acme"), ("agent", "a/1")]
    assert seen.etag == service.current("acme").etag
    assert [(h.scope, h.target) for h in reader.current("globex").halts] == [("run", "r-9")]
    service.clear(ADMIN, "workspace", "acme", None)  # the workspace scope's target is the workspace
    assert [(h.scope, h.target) for h in reader.current("acme").halts] == [("agent", "a/1")]
    history = reader.history("acme")
    assert [(rec["type"], rec["data"]["scope"]) for _, rec in history][:2] == [
        ("halt.cleared", "workspace"), ("halt.cleared", "workflow")]
    assert len(history) == 5 and [i for i, _ in history] == sorted((i for i, _ in history), reverse=True)


@pytest.mark.parametrize(("scope", "target", "reason", "needle"), [
    ("tenant", "x", "why", "unknown halt scope 'tenant'; one of: workspace, workflow, agent, run"),
    ("workflow", "w" * 513, "why", "is not a workflow name: 1-512 characters"),
    ("agent", "a" * 600, "why", "600 characters"),
    ("run", "r" * 129, "why", "is not a run id"),
    ("run", "r/1", "why", "is not a run id: 1-128 characters from [A-Za-z0-9._:-]"),
    ("workflow", "", "why", "scope workflow needs a target"),
    ("workflow", None, "why", "scope workflow needs a target"),
    ("workspace", "globex", "why", "scope workspace takes no target"),
    ("workflow", "w", "   ", "say why"),
    ("workflow", "w", "x" * 2001, "at most 2000 characters"),
])
def test_a_bad_request_names_what_is_wrong_and_writes_nothing(ledger, service, scope, target, reason, needle):
    with pytest.raises(HaltRequestError) as info:
        service.set(ADMIN, scope, target, reason)
    assert needle in str(info.value)
    assert ledger.store.size() == 0


def test_a_run_target_may_be_any_run_id_dots_included(service):
    for run_id in ("..", ".", "a..b", "run:1.2-x_y"):
        assert service.set(ADMIN, "run", run_id, "why").halt.target == run_id


def test_the_run_id_pattern_the_api_schema_documents_is_the_contracts():
    assert RUN_ID == Ident.__metadata__[0].pattern
