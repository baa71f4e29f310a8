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
        m.setattr(scan_module, "_decode_event_entry", _refuse)  # every entry to _general
        slow = scan_entries(0, datas, origin, [len(datas)])
    as_tuple = lambda s: (s.count, s.error, s.runs, s.event_ids, s.nodes, s.origin)  # noqa: E731
    return as_tuple(fast), as_tuple(slow)


def test_the_fast_path_and_a_full_parse_agree_on_the_ledgers_own_entries(entries, monkeypatch):
    origin, datas = entries
    fast, slow = _both(origin, datas, monkeypatch)
    assert fast == slow and fast[0] == len(datas) and fast[1] is None


def test_the_fast_path_takes_every_event_entry_the_ledger_writes_but_approval_decided(entries, monkeypatch):
    origin, datas = entries
    decided = [n for n, d in enumerate(datas) if orjson.loads(d)["event"]["type"] == "approval.decided"]
    assert decided  # the workload decides approvals: those go whole to the parent's approval check
    general = []
    real = scan_module._general
    monkeypatch.setattr(scan_module, "_general", lambda *a: general.append(a[1]) or real(*a))
    scan = scan_entries(0, datas, origin, [])
    assert scan.error is None and scan.count == len(datas) > 100
    assert general == decided
    assert [a[0] for a in scan.approvals] == decided
    general.clear()
    scan_entries(0, datas, None, [])  # origin unknown: the first entry tells it
    assert general == [0, *decided]


def _reencode(data: bytes, change) -> bytes:
    d = orjson.loads(data)
    change(d)
    return orjson.dumps(d, option=orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize(
    "change",
    [
        # a complete forged tail inside the source (and a wrong index outside it): the fast
        # path must not read the forgery
        lambda d: d["source"].update(zz={
            "event": {"data": {}, "event_id": "fake-0", "run_id": "fake", "seq": 0, "workspace": "acme"},
            "index": d["index"], "kind": "event", "log": d["log"], "prev": None, "received": "x",
        }) or d.update(index=d["index"] + 1),
        lambda d: d.update(index=d["index"] + 1),
        lambda d: d.update(log="elsewhere.example/log"),
        lambda d: d.update(prev="00" * 32),
        lambda d: d["event"].update(seq=d["event"]["seq"] + 1),
        lambda d: d["event"].update(run_id="another-run"),
        lambda d: d["event"].update(event_id="run-0000000-0"),
        lambda d: d["event"]["data"].update(event_id="nested-key-with-the-same-name"),
        lambda d: d["source"].update(name="a}b{c.jsonl"),
    ],
    ids=["fake-tail-in-source", "index", "log", "prev", "seq", "run", "duplicate-event-id",
         "nested-event-id", "braces-in-a-string"],
)
def test_the_fast_path_and_a_full_parse_agree_on_altered_entries(entries, monkeypatch, change):
    origin, datas = entries
    k = len(datas) // 2
    altered = [*datas[:k], _reencode(datas[k], change), *datas[k + 1 :]]
    fast, slow = _both(origin, altered, monkeypatch)
    assert fast == slow


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        (lambda b: b.replace(b'"data":{', b'"data":{"x":"\xff\xfe",', 1), False),  # not UTF-8
        (lambda b: b.replace(b'"data":{', b'"data":{"x":"\\ud800",', 1), False),  # lone surrogate
        (lambda b: b.replace(b'"data":{', b'"data":{"x":"a\x01",', 1), False),  # control character
        (lambda b: b.replace(b'"data":{', b'"data":{"x":[1,],', 1), False),
        (lambda b: b[:-1], False),  # cut short
        (lambda b: b + b" x", False),  # trailing bytes
        (lambda b: b.replace(b',"kind":', b',"index":0,"kind":', 1), False),  # duplicate member
        (lambda b: b.replace(b'{"event":', b'{"extra":1,"event":', 1), True),  # a member of its own
        (lambda b: b.replace(b'"received":', b'"received" :\n ', 1), True),  # whitespace
        (lambda b: _reencode(b, lambda d: d.update(index=True)), False),
        (lambda b: _reencode(b, lambda d: d["event"].update(seq=float(d["event"]["seq"]))), False),
        (lambda b: _reencode(b, lambda d: d["event"].update(run_id=[d["event"]["run_id"]])), False),
        (lambda b: _reencode(b, lambda d: d["event"].update(workspace=None)), False),
        (lambda b: _reencode(b, lambda d: d["event"].pop("event_id")), False),
        (lambda b: _reencode(b, lambda d: d.update(prev=7)), False),
        (lambda b: orjson.dumps(dict(reversed(orjson.loads(b).items()))), True),  # member order
    ],
    ids=["not-utf8", "lone-surrogate", "control-char", "bad-json", "cut-short", "trailing",
         "duplicate-member", "extra-member", "whitespace", "index-true", "seq-float", "run-list",
         "workspace-null", "no-event-id", "prev-number", "member-order"],
)
def test_the_fast_path_and_a_full_parse_agree_on_entries_in_other_shapes(entries, monkeypatch, change, accepted):
    """Bytes the ledger never writes: the verdict is the full parse's, whichever path takes them.

    ``accepted``: the altered entry itself passes (its run's next entry then no longer chains).
    """
    origin, datas = entries
    k = len(datas) // 2
    altered = [*datas[:k], change(datas[k]), *datas[k + 1 :]]
    assert altered[k] != datas[k]
    fast, slow = _both(origin, altered, monkeypatch)
    assert fast == slow
    # an entry taken as it stands changes its leaf, so the next entry of its run breaks the chain
    assert fast[1] is not None and (fast[1][0] > k if accepted else fast[1][0] == k), fast[1]
