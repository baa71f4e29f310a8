"""Turn stored ledger entries (canonical JSON bytes) into a columnar Arrow batch of events."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from domain.canonical import loads
from projections.schema import COLUMN_INDEX, STAGE_COLUMNS, STAGE_SCHEMA

_N = len(STAGE_COLUMNS)
_C = COLUMN_INDEX
_COMMON = 10  # idx .. trace_id


def _text(value: Any) -> str | None:
    """Exact decimal text of a JSON number or decimal string (never through a float)."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _exact(raw: bytes) -> dict[str, Any]:
    """Re-parse an entry keeping fractional numbers as Decimal (rare: money sent as a number)."""
    entry: dict[str, Any] = loads(raw)
    return entry


def _set(row: list[Any], data: dict[str, Any], fields: tuple[str, ...]) -> None:
    for f in fields:
        row[_C[f]] = data.get(f)


def _run_started(row: list[Any], d: dict[str, Any]) -> bool:
    _set(row, d, ("workflow", "mode", "risk_tier", "replay_of"))
    labels = d.get("labels")
    if labels:
        row[_C["route_label"]] = labels.get("route")
        row[_C["labels"]] = orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode()
    budget = d.get("budget")
    if budget:
        row[_C["budget_max_model_calls"]] = budget.get("max_model_calls")
        row[_C["budget_max_tokens"]] = budget.get("max_tokens")
        cap = budget.get("max_cost_usd")
        if isinstance(cap, float):
            return False
        row[_C["budget_max_cost_usd"]] = _text(cap)
        row[_C["budget_deadline_s"]] = _float(budget.get("deadline_s"))
    return True


def _model_called(row: list[Any], d: dict[str, Any]) -> bool:
    cost = d["cost_usd"]
    if isinstance(cost, float):
        return False
    _set(row, d, ("call_id", "provider", "model", "input_tokens", "output_tokens"))
    row[_C["cost_usd"]] = _text(cost)
    row[_C["latency_ms"]] = _float(d.get("latency_ms"))
    row[_C["confidence"]] = _float(d.get("confidence"))
    response = d.get("response")
    if response:
        row[_C["finish_reason"]] = response.get("finish_reason")
    return True


def _tool_called(row: list[Any], d: dict[str, Any]) -> bool:
    _set(row, d, ("call_id", "tool", "status", "side_effect", "error"))
    row[_C["latency_ms"]] = _float(d.get("latency_ms"))
    return True


def _policy(row: list[Any], d: dict[str, Any]) -> bool:
    _set(row, d, ("policy", "action", "decision", "reason"))
    row[_C["risk_score"]] = _float(d.get("risk_score"))
    return True


def _budget(row: list[Any], d: dict[str, Any]) -> bool:
    if isinstance(d["limit_value"], float) or isinstance(d["observed"], float):
        return False
    row[_C["budget_limit"]] = d["limit"]
    row[_C["limit_value"]] = _text(d["limit_value"])
    row[_C["observed"]] = _text(d["observed"])
    return True


def _fields(*names: str) -> Any:
    def fill(row: list[Any], d: dict[str, Any]) -> bool:
        _set(row, d, names)
        return True

    return fill


_BY_TYPE = {
    "run.started": _run_started,
    "model.called": _model_called,
    "tool.called": _tool_called,
    "policy.evaluated": _policy,
    "approval.requested": _fields("approval_id", "summary", "risk", "change_id"),
    "approval.decided": _fields("approval_id", "decision", "by", "reason"),
    "change.proposed": _fields("change_id", "target", "reversible"),
    "change.applied": _fields("change_id"),
    "change.reverted": _fields("change_id", "by", "reason"),
    "budget.exceeded": _budget,
    "run.completed": _fields("outcome", "error"),
    "feedback.recorded": _fields("accepted", "by", "comment"),
}


def event_row(index: int, event: dict[str, Any]) -> list[Any] | None:
    """The staged row of one event, or None if it must be re-read exactly (a float money)."""
    agent = event["agent"]
    row: list[Any] = [
        index,
        event["workspace"],
        event["run_id"],
        event["seq"],
        event["event_id"],
        event["type"],
        event["time"],
        agent["id"],
        agent["version"],
        event.get("trace_id"),
    ]
    row.extend([None] * (_N - _COMMON))
    fill = _BY_TYPE.get(event["type"])
    if fill is not None and not fill(row, event["data"]):
        return None
    return row


class Batch:
    """Events of a run of ledger entries, as Arrow columns, with the runs they touch."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.entries = 0
        self.end = 0  # ledger position after the last entry read

    def add(self, index: int, raw: bytes) -> None:
        """Add one stored entry (non-event entries only move the position)."""
        self.entries += 1
        self.end = index + 1
        entry = orjson.loads(raw)
        if entry.get("kind") != "event":
            return
        row = event_row(index, entry["event"])
        if row is None:
            row = event_row(index, _exact(raw)["event"])
            assert row is not None
        self.rows.append(row)

    def extend(self, entries: Iterable[tuple[int, bytes]]) -> None:
        """Add stored (index, bytes) entries in order."""
        for index, raw in entries:
            self.add(index, raw)

    def table(self) -> pa.Table:
        """The events as an Arrow table in the staging schema."""
        if not self.rows:
            return STAGE_SCHEMA.empty_table()
        columns = list(zip(*self.rows, strict=True))
        arrays = [
            pa.array(col, type=dtype) for col, (_, dtype) in zip(columns, STAGE_COLUMNS, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=STAGE_SCHEMA)

    def touched(self) -> pa.Table:
        """Distinct (workspace, run_id) of the batch's events."""
        keys = sorted({(r[1], r[2]) for r in self.rows})
        return pa.table(
            {
                "workspace": pa.array([k[0] for k in keys], type=pa.string()),
                "run_id": pa.array([k[1] for k in keys], type=pa.string()),
            }
        )
