"""The event contract: what is accepted, what is rejected, and how the error reads."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from domain.errors import ContractError
from tachograph.contract.canonical import dumps, loads, parse_event
from tachograph.contract.events import EVENT_TYPES, json_schema
from tests.factories import event, workload_events

ROOT = Path(__file__).resolve().parents[2]

MODEL_CALL = {
    "call_id": "m1", "provider": "openai", "model": "gpt-4.1", "input_tokens": 10,
    "output_tokens": 5, "cost_usd": "0.000123", "latency_ms": 120,
}


def raw(ev: dict) -> bytes:
    return json.dumps(ev).encode()


def problems(ev: dict | bytes) -> list[tuple[str, str]]:
    with pytest.raises(ContractError) as info:
        parse_event(ev if isinstance(ev, bytes) else raw(ev))
    return info.value.problems


def test_every_generated_event_is_valid_under_the_contract():
    for ev in workload_events(runs=40):
        parse_event(dumps(ev))


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("spec", "tachograph.event/2", "spec"),
        ("event_id", "has space", "event_id"),
        ("event_id", "x" * 129, "event_id"),
        ("workspace", "Acme", "workspace"),
        ("workspace", "", "workspace"),
        ("run_id", "", "run_id"),
        ("seq", -1, "seq"),
        ("seq", "1", "seq"),
        ("seq", True, "seq"),
        ("time", "2026-01-01T00:00:00", "time"),
        ("time", "2026-13-01T00:00:00Z", "time"),
        ("agent", {"id": "a"}, "agent.version"),
        ("trace_id", "ABC", "trace_id"),
        ("span_id", "0" * 15, "span_id"),
    ],
)
def test_a_bad_envelope_field_is_named_in_the_error(field, value, path):
    ev = event()
    ev[field] = value
    found = problems(ev)
    assert any(p[0] == path for p in found), found


def test_unknown_fields_in_data_are_rejected():
    ev = event(data={"workflow": "wf", "mode": "execute", "risk_tier": "low", "colour": "red"})
    assert ("data.colour", "Extra inputs are not permitted") in problems(ev)


def test_unknown_event_type_is_rejected_with_the_list_of_types():
    ev = event(etype="model.invented")
    with pytest.raises(ContractError, match=r"unknown event type 'model\.invented'"):
        parse_event(raw(ev))


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_each_type_rejects_missing_required_data(etype):
    ev = event(etype=etype, data={})
    if etype in ("run.started",):
        assert {p[0] for p in problems(ev)} >= {"data.workflow", "data.mode", "data.risk_tier"}
    else:
        assert problems(ev)


@pytest.mark.parametrize(
    ("cost", "ok"),
    [
        ("0.000000001", True),
        ("12", True),
        (0, True),
        ("0.0000000001", False),
        ("-1", False),
        ("1e3", False),
        ("abc", False),
        (True, False),
        (None, False),
    ],
)
def test_money_is_a_decimal_number_or_string_with_at_most_nine_places(cost, ok):
    ev = event(seq=1, etype="model.called", data={**MODEL_CALL, "cost_usd": cost})
    if ok:
        parse_event(raw(ev))
    else:
        assert any(p[0] == "data.cost_usd" for p in problems(ev))


def test_money_as_a_json_number_never_passes_through_a_binary_float():
    body = raw(event(seq=1, etype="model.called", data=MODEL_CALL)).replace(
        b'"0.000123"', b"0.100000001"
    )
    value, canonical = parse_event(body)
    assert value["data"]["cost_usd"] == Decimal("0.100000001")
    assert b'"cost_usd":0.100000001' in canonical
    # too many places for a float to keep, rejected rather than rounded
    assert any(
        p[0] == "data.cost_usd"
        for p in problems(body.replace(b"0.100000001", b"0.1000000000000000055511151231257827"))
    )


def test_non_utf8_and_non_json_are_rejected_with_the_reason():
    assert problems(b"\xff\xfe{}") == [("(event)", "not UTF-8")]
    assert problems(b"{not json") == [("(event)", "not JSON")]
    assert problems(b"[1, 2]") == [("(event)", "not an object")]


def test_oversize_events_are_rejected():
    big = event(data={"workflow": "wf", "mode": "execute", "risk_tier": "low", "input": {"x": "y" * 1_100_000}})
    assert problems(big) == [("(event)", "oversize")]


def test_canonical_bytes_sort_keys_drop_whitespace_and_keep_number_digits():
    body = b'{ "b": 1.50, "a": [1, 2.0e0] }'
    assert dumps(loads(body)) == b'{"a":[1,2.0],"b":1.50}'


def test_the_same_event_in_any_key_order_has_the_same_canonical_bytes():
    ev = event(seq=1, etype="model.called", data=MODEL_CALL)
    shuffled = json.dumps(dict(reversed(list(ev.items()))), indent=2).encode()
    assert parse_event(raw(ev))[1] == parse_event(shuffled)[1]


def test_the_published_json_schema_is_current():
    published = json.loads((ROOT / "docs" / "event.schema.json").read_text())
    assert published == json.loads(json.dumps(json_schema())), (
        "docs/event.schema.json is stale: run `tacho schema > docs/event.schema.json`"
    )


def test_the_json_schema_names_every_event_type():
    text = json.dumps(json_schema())
    for etype in EVENT_TYPES:
        assert f'"{etype}"' in text
