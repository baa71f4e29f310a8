"""The webhook file and the ledger follower: positions, idempotent enqueue, bounds, retention."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from api.webhooks import notification_of
from api.webhooks_dispatch import DeliveryPolicy, WebhookDispatcher
from api.webhooks_store import WebhookStore
from domain.errors import ConfigError, NotFoundError
from domain.ledger import Ledger
from domain.records import RECORD_TYPES, Record
from tests.factories import FakeClock, event, items, make_ledger

ALL = ["approval.requested", "approval.decided", "halt.set", "budget.exceeded", "run.failed"]


def _store(tmp_path: Path) -> WebhookStore:
    return WebhookStore(tmp_path / "keys" / "webhooks.db")


def _approval(run: str, workspace: str = "acme") -> list[dict]:
    """A run that asks for an approval (ids are unique within a workspace, so named after the run)."""
    return [event(run, 0, workspace=workspace),
            event(run, 1, "approval.requested", {"approval_id": f"{run}.a1", "summary": "s", "risk": "low"},
                  workspace=workspace)]


def _dispatcher(store: WebhookStore, ledger: Ledger, **policy: object) -> WebhookDispatcher:
    return WebhookDispatcher(store, ledger.store, DeliveryPolicy(**policy), clock=FakeClock())


def _add(store: WebhookStore, ledger: Ledger, workspace: str = "acme", kinds: list[str] = ALL,
         limit: int = 10) -> str:
    ep = store.create_endpoint(workspace, "https://example.com/h", kinds, "", ledger.store.size(),
                               "whsec_x", 0.0, limit)
    return ep.id


def test_the_file_is_private_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = tmp_path / "keys" / "webhooks.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.close()
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        _store(tmp_path)


def test_the_first_start_notifies_from_now_on_and_a_restart_resumes_at_the_kept_position(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items(_approval("old")))  # before any endpoint: never notified
    store = _store(tmp_path)
    ep = _add(store, ledger)
    ledger.append(items(_approval("new")))
    d = _dispatcher(store, ledger)
    assert d.follow() == (1, True)
    assert [x.run_id for x in store.deliveries(ep, None, 10)] == ["new"]
    store.close()
    ledger.append(items(_approval("while-down")))  # appended while no dispatcher runs
    store = _store(tmp_path)
    assert store.position() == 2 + 2
    assert _dispatcher(store, ledger).follow() == (1, True)
    assert _dispatcher(store, ledger).follow() == (0, True)  # nothing twice
    assert [x.run_id for x in store.deliveries(ep, None, 10)] == ["while-down", "new"]


def test_an_endpoint_hears_only_its_workspace_and_kinds_from_its_creation_on(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    store = _store(tmp_path)
    d = _dispatcher(store, ledger)
    d.follow()
    acme = _add(store, ledger, kinds=["run.failed"])
    beta = _add(store, ledger, "beta")
    ledger.append(items([*_approval("r1"), event("r1", 2, "run.completed", {"outcome": "failed"})]))
    ledger.append(items(_approval("b1", "beta")))
    late = _add(store, ledger)  # created after those entries were appended, before they are read
    assert d.follow() == (2, True)
    assert [(x.kind, x.run_id) for x in store.deliveries(acme, None, 10)] == [("run.failed", "r1")]
    assert [(x.kind, x.run_id) for x in store.deliveries(beta, None, 10)] == [("approval.requested", "b1")]
    assert store.deliveries(late, None, 10) == []


def test_enqueueing_twice_adds_nothing_and_a_deleted_endpoint_gets_nothing(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    store = _store(tmp_path)
    ep = _add(store, ledger)
    gone = _add(store, ledger)
    ledger.append(items(_approval("r1")))
    note = notification_of(1, {"event": _approval("r1")[1]}, True)
    assert note is not None
    assert store.enqueue([(ep, note), (gone, note)], 2, 1.0, 100) == 2
    store.delete_endpoint("acme", gone)
    assert store.enqueue([(ep, note), (gone, note)], 2, 1.0, 100) == 0
    assert store.counts(ep) == {"pending": 1, "delivered": 0, "failed": 0}
    assert store.deliveries(gone, None, 10) == []
    with pytest.raises(NotFoundError):
        store.endpoint("acme", gone)


def test_an_endpoint_with_too_many_pending_deliveries_gets_new_ones_as_failed(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    store = _store(tmp_path)
    ep = _add(store, ledger)
    ledger.append(items(_approval("r1") + _approval("r2") + _approval("r3")))
    assert _dispatcher(store, ledger, max_pending=2).follow() == (3, True)
    rows = store.deliveries(ep, None, 10)
    assert [x.status for x in rows] == ["failed", "pending", "pending"]
    assert "2 deliveries were already pending" in (rows[0].last_error or "")


def test_endpoints_per_workspace_are_bounded(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    store = _store(tmp_path)
    for _ in range(3):
        _add(store, ledger, limit=3)
    with pytest.raises(Exception, match="has 3 webhook endpoints, the most allowed"):
        _add(store, ledger, limit=3)
    _add(store, ledger, "beta", limit=3)  # another workspace has its own bound


def test_pruning_keeps_pending_and_the_newest_finished_deliveries(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    store = _store(tmp_path)
    ep = _add(store, ledger)
    ledger.append(items([e for i in range(5) for e in _approval(f"r{i}")]))
    _dispatcher(store, ledger).follow()
    rows = store.deliveries(ep, None, 10)
    for row in rows[1:]:
        store.attempted(row.id, "delivered", None, 200, None, 2.0)
    assert store.prune(keep=2) == 2
    assert [x.status for x in store.deliveries(ep, None, 10)] == ["pending", "delivered", "delivered"]


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = DeliveryPolicy(backoff_s=0.5, backoff_max_s=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_decision_and_halt_records_notify_and_then_an_agents_decided_event_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the types the approvals and halts slices add to RECORD_TYPES (set here so this runs before and after)
    monkeypatch.setitem(RECORD_TYPES, "approval.decision", "a person's decision")
    monkeypatch.setitem(RECORD_TYPES, "halt.set", "a kill switch set")
    ledger = make_ledger(tmp_path / "l.db")
    store = _store(tmp_path)
    ep = _add(store, ledger)
    person = {"key_id": "k1", "role": "approver", "name": "Ada"}
    ledger.append(items(_approval("r1")))
    ledger.append_records([
        Record("approval.decision", "acme", "2026-01-01T00:00:09Z", person,
               {"approval_id": "r1.a1", "run_id": "r1", "decision": "approved", "by": "Ada"}),
        Record("halt.set", "acme", "2026-01-01T00:00:10Z", person, {"scope": "workspace"}),
        Record("audit.read", "acme", "2026-01-01T00:00:11Z", person, {"action": "runs.list"}),
    ])
    ledger.append(items([event("r1", 2, "approval.decided",
                               {"approval_id": "r1.a1", "decision": "approved", "by": "Ada"})]))
    assert _dispatcher(store, ledger).follow() == (3, True)
    rows = store.deliveries(ep, None, 10)[::-1]
    assert [(x.kind, x.run_id, x.notification_id) for x in rows] == [
        ("approval.requested", "r1", "ntf_1"), ("approval.decided", "r1", "ntf_2"), ("halt.set", None, "ntf_3")]


def test_a_replays_approval_request_notifies_nobody(tmp_path: Path) -> None:
    """A replay asks no person (its request is not in the approvals index): no webhook says one waits."""
    ledger = make_ledger(tmp_path / "l.db")
    store = _store(tmp_path)
    ep = _add(store, ledger)
    start = {"workflow": "wf", "mode": "execute", "risk_tier": "low", "replay_of": "r1"}
    replay = [event("rp", 0, "run.started", start),
              event("rp", 1, "approval.requested", {"approval_id": "rp.a1", "summary": "s", "risk": "low"})]
    assert ledger.append(items([*_approval("r1"), *replay])).accepted == 4
    assert _dispatcher(store, ledger).follow() == (1, True)
    assert [(x.kind, x.run_id) for x in store.deliveries(ep, None, 10)] == [("approval.requested", "r1")]
