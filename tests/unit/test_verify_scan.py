"""The verifier's fast path (msgspec, into an event entry's shape) must agree with ``_general``.

Every entry that the fast path accepts is checked again through ``_general`` (orjson, every
member looked at): same leaves, runs, event ids and errors. Entries shaped unlike the ledger's
own go to ``_general``, including a forged entry hidden inside the source object.
"""

from __future__ import annotations

import msgspec
import orjson
import pytest

import domain.verify_scan as scan_module
from domain.verify_scan import scan_entries
from tests.factories import append_deciding, event, items, make_ledger, workload_events

ORIGIN = None


START = {"workflow": "w", "mode": "execute", "risk_tier": "low"}


def _decided_and_replayed() -> list[dict]:
    """A run whose approval a person decides, and a replay of it that repeats the decision."""
    asked = {"summary": "s", "risk": "high"}
    said = {"decision": "approved", "by": "pat"}
    return [
        event("p1", 0, "run.started", START),
        event("p1", 1, "approval.requested", {"approval_id": "p1/a", **asked}),
        event("p1", 2, "approval.decided", {"approval_id": "p1/a", **said}),
        event("p1", 3, "run.completed", {"outcome": "succeeded"}),
        event("p1.replay", 0, "run.started", {**START, "replay_of": "p1"}),
        event("p1.replay", 1, "approval.requested", {"approval_id": "p1.replay/a", **asked}),
        event("p1.replay", 2, "approval.decided", {"approval_id": "p1.replay/a", "replayed_from": "p1/a", **said}),
        event("p1.replay", 3, "run.completed", {"outcome": "succeeded"}),
    ]


@pytest.fixture
def entries(tmp_path) -> tuple[str, list[bytes]]:
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=50)
    ledger.append(items(workload_events(runs=12)))
    assert append_deciding(ledger, _decided_and_replayed()).accepted == 8
    return ledger.config.origin, [data for _, data in ledger.store.raw_entries()]


def _refuse(data: bytes) -> None:
    raise msgspec.DecodeError("fast path switched off")


def _both(origin: str, datas: list[bytes], monkeypatch) -> tuple:
    fast = scan_entries(0, datas, origin, [len(datas)])
    with monkeypatch.context() as m:
        m.setattr(scan_module, "_DECODERS", dict.fromkeys(scan_module._DECODERS, _refuse))  # all to _general
        slow = scan_entries(0, datas, origin, [len(datas)])
    as_tuple = lambda s: (s.count, s.error, s.runs, s.event_ids, s.nodes, s.origin)  # noqa: E731
    return as_tuple(fast), as_tuple(slow)


def test_the_fast_path_and_a_full_parse_agree_on_the_ledgers_own_entries(entries, monkeypatch):
    origin, datas = entries
    fast, slow = _both(origin, datas, monkeypatch)
    assert fast == slow and fast[0] == len(datas) and fast[1] is None


def test_the_fast_path_takes_every_event_entry_the_ledger_writes(entries, monkeypatch):
    """All of them on a ledger whose approvals are not checked; with the check on (``typed``),
    all but approval.decided and a replay's run.started, which go whole to the parent's approval
    check. Records (here a person's decision) never take the fast path."""
    origin, datas = entries
    parsed = [orjson.loads(d) for d in datas]
    records = [n for n, d in enumerate(parsed) if d["kind"] == "record"]
    decided = [n for n, d in enumerate(parsed) if d.get("event", {}).get("type") == "approval.decided"]
    replays = [n for n, d in enumerate(parsed) if d.get("event", {}).get("data", {}).get("replay_of")]
    assert records and decided and replays
    general = []
    real = scan_module._general
    monkeypatch.setattr(scan_module, "_general", lambda *a: general.append(a[1]) or real(*a))
    scan = scan_entries(0, datas, origin, [])
    assert scan.error is None and scan.count == len(datas) > 100
    assert general == records and [a.what for a in scan.approvals] == ["decision"]
    general.clear()
    scan = scan_entries(0, datas, origin, [], typed=True)
    assert scan.error is None and scan.count == len(datas)
    slow = sorted([*records, *decided, *replays])
    assert general == slow
    assert [(a.position, a.what) for a in scan.approvals] == [
        (n, "decision" if n in records else "decided" if n in decided else "replay") for n in slow]
    assert scan.approvals[-2:] == [(replays[0], "replay", "acme", None, "p1.replay", None, None, "p1"),
                                   (decided[-1], "decided", "acme", "p1.replay/a", "p1.replay", "approved",
                                    "pat", "p1/a")]
    general.clear()
    scan_entries(0, datas, None, [], typed=True)  # origin unknown: the first entry tells it
    assert general == [0, *slow]
