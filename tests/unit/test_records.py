"""Platform records: one builder, a kind the event path never writes, shape-checked by the verifier."""

from __future__ import annotations

import orjson
import pytest

from domain.records import Record, RecordError
from domain.verify_scan import scan_entries
from tests.factories import event, items, make_ledger, verify_ledger


def _read(ws: str = "acme", **data: object) -> Record:
    return Record("audit.read", ws, "2026-01-01T00:00:00Z", {"key_id": "k1", "role": "auditor"},
                  {"action": "runs.list", **data})


def _ledger_with_records(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items([event("r1", 0)]))
    ledger.append_records([_read(), _read("beta")])
    ledger.append(items([event("r1", 1, "run.completed", {"outcome": "succeeded"})]))
    ledger.checkpoint()
    return ledger


def test_a_record_entry_has_its_own_kind_and_canonical_bytes_and_verifies(tmp_path):
    ledger = _ledger_with_records(tmp_path)
    rows = list(ledger.store.entries())
    assert [r.kind for r in rows] == ["event", "record", "record", "event"]
    d = orjson.loads(rows[1].data)
    assert set(d) == {"index", "kind", "log", "received", "record"}
    assert d["record"]["record_id"] == "record/1" and d["record"]["workspace"] == "acme"
    assert rows[1].data == orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
    result = verify_ledger(ledger, origin=ledger.config.origin)
    assert result.ok, result.reason


def test_the_event_path_cannot_write_a_record(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    forged = {"index": 0, "kind": "record", "log": ledger.config.origin, "received": "x",
              "record": {"type": "audit.read"}}
    report = ledger.append(items([forged]))
    assert report.quarantined == 1 and ledger.store.size() == 0


@pytest.mark.parametrize("edit, reason", [
    (lambda d: d["record"].update(record_id="record/7"), "does not name its position"),
    (lambda d: d.update(extra=1), "unexpected members"),
    (lambda d: d["record"].pop("actor"), "must have exactly"),
    (lambda d: d["record"].update(workspace=5), "workspace is not a string"),
])
def test_the_verifier_refuses_a_record_entry_of_another_shape(tmp_path, edit, reason):
    ledger = _ledger_with_records(tmp_path)
    datas = [data for _, data in ledger.store.raw_entries()]
    d = orjson.loads(datas[1])
    edit(d)
    datas[1] = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
    scan = scan_entries(0, datas, ledger.config.origin, [])
    assert scan.error is not None and scan.error[0] == 1 and reason in scan.error[1]


def test_a_record_of_unknown_type_or_bad_workspace_or_too_large_is_refused_and_nothing_written(tmp_path):
    ledger = make_ledger(tmp_path / "l.db")
    with pytest.raises(RecordError, match="unknown record type"):
        ledger.append_records([Record("tool.called", "acme", "t", {}, {})])
    with pytest.raises(RecordError, match="workspace"):
        ledger.append_records([_read("Bad/WS")])
    with pytest.raises(RecordError, match="over 65536"):
        ledger.append_records([_read(blob="x" * 70_000)])
    assert ledger.store.size() == 0
