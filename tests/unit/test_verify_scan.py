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
from tests.factories import items, make_ledger, workload_events

ORIGIN = None


@pytest.fixture
def entries(tmp_path) -> tuple[str, list[bytes]]:
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=50)
    ledger.append(items(workload_events(runs=12)))
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
    all but approval.decided, which go whole to the parent's approval check."""
    origin, datas = entries
    decided = [n for n, d in enumerate(datas) if orjson.loads(d)["event"]["type"] == "approval.decided"]
    assert decided  # the workload decides approvals
    general = []
    real = scan_module._general
    monkeypatch.setattr(scan_module, "_general", lambda *a: general.append(a[1]) or real(*a))
    scan = scan_entries(0, datas, origin, [])
    assert scan.error is None and scan.count == len(datas) > 100
    assert general == [] and scan.approvals == []
    scan = scan_entries(0, datas, origin, [], typed=True)
    assert scan.error is None and scan.count == len(datas)
    assert general == decided
    assert [a[0] for a in scan.approvals] == decided
    general.clear()
    scan_entries(0, datas, None, [], typed=True)  # origin unknown: the first entry tells it
    assert general == [0, *decided]
