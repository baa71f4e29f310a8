"""The verifier's fast path reads an entry from its tail; it must agree with a full parse.

Every entry that the fast path accepts is checked again through ``_general`` (a whole-entry
parse): same leaves, runs, event ids and errors. Entries shaped unlike the ledger's own go to
the full parse, including a forged tail hidden inside the source object.
"""

from __future__ import annotations

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


def _both(origin: str, datas: list[bytes], monkeypatch) -> tuple:
    fast = scan_entries(0, datas, origin, [len(datas)])
    with monkeypatch.context() as m:
        m.setattr(scan_module, "_middle", lambda _origin: None)  # every entry parsed whole
        slow = scan_entries(0, datas, origin, [len(datas)])
    as_tuple = lambda s: (s.count, s.error, s.runs, s.event_ids, s.nodes, s.origin)  # noqa: E731
    return as_tuple(fast), as_tuple(slow)


def test_the_fast_path_and_a_full_parse_agree_on_the_ledgers_own_entries(entries, monkeypatch):
    origin, datas = entries
    fast, slow = _both(origin, datas, monkeypatch)
    assert fast == slow and fast[0] == len(datas) and fast[1] is None


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
