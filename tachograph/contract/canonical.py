"""Parse raw event bytes exactly and encode canonical JSON bytes.

Canonical form: UTF-8 JSON, object keys sorted, no insignificant whitespace, numbers written
with the digits they were published with (parsed as Decimal, never as a binary float).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import jiter
import orjson
from pydantic import ValidationError

from tachograph.contract.events import EVENT_ADAPTER, EVENT_TYPES, SPEC
from tachograph.errors import ContractError

MAX_EVENT_BYTES = 1_048_576

_OPTS = orjson.OPT_SORT_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError("non-finite number")
        return orjson.Fragment(str(value))
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """Canonical JSON bytes of a Python value (Decimal numbers kept exact)."""
    return orjson.dumps(value, default=_default, option=_OPTS)


def loads(raw: bytes | str) -> Any:
    """Parse JSON keeping every fractional number as an exact Decimal."""
    return jiter.from_json(raw if isinstance(raw, bytes) else raw.encode(), float_mode="decimal")


def _problems(e: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in e.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # the discriminated union adds the type tag as the first location element
        if loc and loc[0] in EVENT_TYPES:
            loc = loc[1:]
        path = ".".join(loc) or "(event)"
        out.append((path, err["msg"]))
    return out


def parse_event(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """Validate one raw event against the contract; return (event dict, canonical bytes).

    Raises:
        ContractError: naming every field that breaks a rule.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise ContractError(
            f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES}-byte limit",
            [("(event)", "oversize")],
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ContractError(f"not UTF-8: {e}", [("(event)", "not UTF-8")]) from e
    try:
        value = jiter.from_json(raw, float_mode="decimal")
    except ValueError as e:
        raise ContractError(f"not JSON: {e}", [("(event)", "not JSON")]) from e
    del text
    return validate_event(value)


def validate_event(value: Any) -> tuple[dict[str, Any], bytes]:
    """Validate an already-parsed event value; return (event dict, canonical bytes)."""
    if not isinstance(value, dict):
        raise ContractError("an event must be a JSON object", [("(event)", "not an object")])
    if value.get("spec") != SPEC and "spec" in value:
        raise ContractError(
            f"spec must be exactly {SPEC!r}, got {value.get('spec')!r}",
            [("spec", f"must be {SPEC!r}")],
        )
    etype = value.get("type")
    if etype not in EVENT_TYPES:
        raise ContractError(
            f"type: unknown event type {etype!r}; one of {', '.join(EVENT_TYPES)}",
            [("type", "unknown event type")],
        )
    try:
        EVENT_ADAPTER.validate_python(value)
    except ValidationError as e:
        problems = _problems(e)
        detail = "; ".join(f"{path}: {msg}" for path, msg in problems)
        raise ContractError(f"{etype} event breaks the contract: {detail}", problems) from e
    try:
        canonical = dumps(value)
    except (TypeError, orjson.JSONEncodeError) as e:
        raise ContractError(f"cannot encode canonically: {e}", [("(event)", str(e))]) from e
    return value, canonical
