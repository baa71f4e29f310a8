"""Turn stored ledger entries (canonical JSON bytes) into ``events`` rows, parsed by DuckDB.

Python only hands DuckDB the stored bytes as one Arrow string column; DuckDB parses them with
``from_json`` (vectorised, on every core) and casts each field in SQL. Money is exact: a money
field sent as a decimal string is cast from its text, an integer from its digits, and a
fractional JSON number (which DuckDB's JSON reader would turn into a binary float) is re-read
from the stored bytes by :func:`exact_money`, a Python function DuckDB calls for those rows only.

Calling into Python slows the whole statement down even when no row needs it, so the usual
statement has no Python in it: a fractional money number makes it fail (``INEXACT``) instead,
and the projector then reruns the batch, and every later one, with :func:`exact_money`.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from projections.errors import ProjectionError
from projections.schema import MONEY, STAGE_COLUMNS
from tachograph.contract.canonical import loads

EXACT_MONEY = "tacho_exact_money"
INEXACT = "tacho: fractional JSON number as money in ledger entry"

RAW_SCHEMA = pa.schema([("idx", pa.int64()), ("data", pa.string())])

# the fields of an entry DuckDB extracts (everything else in the entry is skipped)
_DATA_FIELDS: dict[str, Any] = {
    "workflow": "VARCHAR", "mode": "VARCHAR", "risk_tier": "VARCHAR", "replay_of": "VARCHAR",
    "labels": "JSON",
    "budget": {"max_model_calls": "BIGINT", "max_tokens": "BIGINT", "max_cost_usd": "JSON",
               "deadline_s": "DOUBLE"},
    "call_id": "VARCHAR", "provider": "VARCHAR", "model": "VARCHAR", "input_tokens": "BIGINT",
    "output_tokens": "BIGINT", "cost_usd": "JSON", "priced": "BOOLEAN", "latency_ms": "DOUBLE",
    "confidence": "DOUBLE",
    "response": {"finish_reason": "VARCHAR"},
    "tool": "VARCHAR", "status": "VARCHAR", "side_effect": "VARCHAR", "error": "VARCHAR",
    "policy": "VARCHAR", "action": "VARCHAR", "decision": "VARCHAR", "reason": "VARCHAR",
    "risk_score": "DOUBLE", "revision": "VARCHAR", "decision_id": "VARCHAR", "approval_id": "VARCHAR", "summary": "VARCHAR", "risk": "VARCHAR",
    "change_id": "VARCHAR", "by": "VARCHAR", "target": "VARCHAR", "reversible": "BOOLEAN",
    "limit": "VARCHAR", "limit_value": "JSON", "observed": "JSON", "outcome": "VARCHAR",
    "accepted": "BOOLEAN", "comment": "VARCHAR", "result": "JSON",
}
ENTRY_STRUCTURE = orjson.dumps({
    "kind": "VARCHAR",
    "source": {"kind": "VARCHAR"},
    "event": {
        "workspace": "VARCHAR", "run_id": "VARCHAR", "seq": "BIGINT", "event_id": "VARCHAR",
        "type": "VARCHAR", "time": "VARCHAR", "trace_id": "VARCHAR",
        "agent": {"id": "VARCHAR", "version": "VARCHAR"},
        "data": _DATA_FIELDS,
    },
}).decode()

# money fields: events column -> (JSON path under event.data, SQL expression of the JSON value)
_MONEY = {
    "budget_max_cost_usd": ("budget.max_cost_usd", "d.budget.max_cost_usd"),
    "cost_usd": ("cost_usd", "d.cost_usd"),
    "limit_value": ("limit_value", "d.limit_value"),
    "observed": ("observed", "d.observed"),
}

_EXPRESSIONS = {
    "idx": "idx",
    "workspace": "e.workspace", "run_id": "e.run_id", "seq": "e.seq", "event_id": "e.event_id",
    "type": "e.type", "time": "CAST(e.time AS TIMESTAMPTZ)", "agent_id": "e.agent.id",
    "agent_version": "e.agent.version", "trace_id": "e.trace_id",
    "source_kind": "source_kind",  # who wrote the entry (a run's origin: domain/origins.py)
    "route_label": "json_extract_string(d.labels, '$.route')",
    "labels": "CAST(d.labels AS VARCHAR)",
    "budget_max_model_calls": "d.budget.max_model_calls",
    "budget_max_tokens": "d.budget.max_tokens",
    "budget_deadline_s": "d.budget.deadline_s",
    "finish_reason": "d.response.finish_reason",
    "budget_limit": 'd."limit"',
    # a model call is priced unless it says ``priced: false`` (then its cost_usd 0 means unknown)
    "priced": "CASE WHEN e.type = 'model.called' THEN coalesce(d.priced, true) END",
    # whether a replay changed a run's result, comparable in SQL (JSON as DuckDB writes it back)
    "result_digest": "CASE WHEN e.type = 'run.completed' THEN md5(CAST(d.result AS VARCHAR)) END",
}


def _money_sql(path: str, value: str, exact_numbers: bool) -> str:
    """Exact DECIMAL of a JSON money value: text and integers in SQL, fractions via Python."""
    kind = f"json_type({value})"
    fraction = (
        f"{EXACT_MONEY}(data, '{path}')" if exact_numbers else f"error('{INEXACT} ' || idx)"
    )
    return (
        f"CAST(CASE WHEN {value} IS NULL THEN NULL "
        f"WHEN {kind} = 'VARCHAR' THEN json_extract_string({value}, '$') "
        f"WHEN {kind} IN ('UBIGINT', 'BIGINT') THEN CAST({value} AS VARCHAR) "
        f"ELSE {fraction} END AS {MONEY})"
    )


def insert_events_sql(stage: str, exact_numbers: bool = False) -> str:
    """INSERT into ``events`` of every event entry of an Arrow (idx, data) table ``stage``.

    Without ``exact_numbers`` the statement fails with ``INEXACT`` on a fractional money number.
    """
    cols = []
    for name, _ in STAGE_COLUMNS:
        if name in _MONEY:
            expr = _money_sql(*_MONEY[name], exact_numbers)
            if name == "cost_usd":  # unknown, not free
                expr = f"CASE WHEN d.priced = false THEN NULL ELSE {expr} END"
        else:
            expr = _EXPRESSIONS.get(name, f'd."{name}"')
        cols.append(f'{expr} AS "{name}"')
        if name == "time":
            cols.append("CAST(CAST(e.time AS TIMESTAMPTZ) AS DATE) AS date")
    return (
        f"INSERT INTO events SELECT {', '.join(cols)} FROM ("
        f"SELECT idx, data, j.event AS e, j.event.data AS d, j.source.kind AS source_kind FROM ("
        f"SELECT idx, data, from_json(data, '{ENTRY_STRUCTURE}') AS j FROM {stage}) "
        "WHERE j.kind = 'event')"
    )


def exact_money(data: str, path: str) -> str | None:
    """Exact decimal text of the money field ``path`` (under event.data) of one stored entry."""
    value: Any = loads(data)["event"]["data"]
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    raise ProjectionError(f"money field {path} is not a number or decimal string: {value!r}")


def register_functions(con: duckdb.DuckDBPyConnection) -> None:
    """Make :func:`exact_money` callable from SQL on ``con`` (kept if already there)."""
    try:
        con.create_function(
            EXACT_MONEY, exact_money, ["VARCHAR", "VARCHAR"], "VARCHAR", side_effects=False
        )
    except duckdb.NotImplementedException as e:  # registered by an earlier projector
        if "already created" not in str(e):
            raise


class Batch:
    """Stored entries of a run of ledger positions, as an Arrow (idx, data) table."""

    def __init__(self) -> None:
        self.indexes: list[int] = []
        self.data: list[bytes] = []
        self.entries = 0
        self.end = 0  # ledger position after the last entry read

    def extend(self, entries: Iterable[tuple[int, bytes]]) -> None:
        """Add stored (index, bytes) entries in order."""
        indexes, data = self.indexes, self.data
        for index, raw in entries:
            indexes.append(index)
            data.append(raw)
        self.entries = len(indexes)
        if indexes:
            self.end = indexes[-1] + 1

    def table(self) -> pa.Table:
        """The entries as an Arrow table (idx BIGINT, data VARCHAR) for DuckDB to parse."""
        return pa.Table.from_arrays(
            [pa.array(self.indexes, pa.int64()), pa.array(self.data, pa.string())],
            schema=RAW_SCHEMA,
        )
