"""The public event contract, version 1 (shared/EVENT_CONTRACT.md) as strict pydantic models.

Events are validated from Python values produced by :mod:`tachograph.contract.canonical`, where every JSON
number with a fraction is a :class:`~decimal.Decimal` (never a binary float), so money stays
exact from the wire to the ledger.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
)

SPEC = "tachograph.event/1"

# Bounds where storage has bounds (docs/ingest.md "Bounds"): each keeps its column exact, with
# headroom for the sums the projections take (DECIMAL(38, 9) money, signed 64-bit counts).
MAX_SEQ = 2**53 - 1
"""Largest ``seq``: a JSON-safe integer, and a signed 64-bit column in every store."""
MAX_COUNT = 2**53 - 1
"""Largest budget count (``max_model_calls``, ``max_tokens``): JSON-safe, never summed."""
MAX_TOKENS = 1_000_000_000
"""Largest token count of one model call: a run's sum stays in BIGINT over 9.2 billion calls."""
MAX_MONEY = Decimal(1_000_000_000_000)
"""Largest amount in USD (9 decimals): a DECIMAL(38, 9) sum holds 10^17 such amounts."""
MAX_NUMBER = 2**53 - 1
"""Largest other number (``latency_ms``, ``deadline_s``, ``limit_value``, ``observed``)."""

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def _check_time(value: str) -> str:
    if not _RFC3339.match(value):
        raise ValueError("must be RFC 3339 with a time zone offset, e.g. 2026-01-31T09:30:00Z")
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"is not a valid date-time ({e})") from e
    return value


def _to_decimal(value: Any, *, what: str) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not a boolean")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):  # Python callers (the runtime); the wire path never yields floats
        d = Decimal(repr(value))
    elif isinstance(value, str) and what == "money":
        try:
            d = Decimal(value)
        except ArithmeticError as e:
            raise ValueError("money must be a decimal number or decimal string") from e
        if not re.fullmatch(r"\d+(\.\d+)?", value):
            raise ValueError("a money string must look like 12.345 (digits, optional fraction)")
    else:
        raise ValueError(f"{what} must be a number")
    if not d.is_finite():
        raise ValueError(f"{what} must be finite")
    return d


def _money(value: Any) -> Decimal:
    d = _to_decimal(value, what="money")
    if d < 0:
        raise ValueError("money must be >= 0")
    if d > MAX_MONEY:
        raise ValueError(f"money must be at most {MAX_MONEY} (USD)")
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -9 and d != d.quantize(Decimal("1e-9")):
        raise ValueError("money has more than 9 decimal places")
    return d


def _number(value: Any) -> Decimal:
    return _to_decimal(value, what="value")


Money = Annotated[
    Decimal,
    BeforeValidator(_money),
    WithJsonSchema(
        {
            "description": f"US dollars, >= 0 and <= {MAX_MONEY}, at most 9 decimal places; "
            "number or decimal string",
            "oneOf": [
                {"type": "number", "minimum": 0, "maximum": int(MAX_MONEY)},
                {"type": "string", "pattern": r"^\d+(\.\d{1,9})?$"},
            ],
        }
    ),
]
NonNegNumber = Annotated[
    Decimal,
    BeforeValidator(_number),
    Field(ge=0, le=MAX_NUMBER),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_NUMBER}),
]
UnitInterval = Annotated[
    Decimal,
    BeforeValidator(_number),
    Field(ge=0, le=1),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}),
]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Workspace = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,64}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Time = Annotated[
    str,
    AfterValidator(_check_time),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": _RFC3339.pattern}),
]
JsonObject = dict[str, Any]

EVENT_TYPES: tuple[str, ...] = (
    "run.started",
    "model.called",
    "tool.called",
    "policy.evaluated",
    "approval.requested",
    "approval.decided",
    "change.proposed",
    "change.applied",
    "change.reverted",
    "budget.exceeded",
    "run.completed",
    "feedback.recorded",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Agent(_Strict):
    """The non-human identity that acted."""

    id: Name
    version: Annotated[str, StringConstraints(max_length=256)]


class Budget(_Strict):
    """Caps a run must stay within."""

    max_model_calls: Count | None = None
    max_tokens: Count | None = None
    max_cost_usd: Money | None = None
    deadline_s: NonNegNumber | None = None


class RunStarted(_Strict):
    workflow: Name
    mode: Literal["suggest", "execute", "dry_run"]
    risk_tier: Literal["low", "medium", "high"]
    budget: Budget | None = None
    input: JsonObject | None = None
    labels: dict[str, str] | None = None
    replay_of: Ident | None = None
    entry_point: Annotated[
        str,
        StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$", max_length=512),
        WithJsonSchema({"type": "string", "maxLength": 512,
                        "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$",
                        "description": "the agent's code as module:function (with agent.version, "
                        "what replay needs to find it again)"}),
    ] | None = None


class Message(_Strict):
    role: Name
    content: Any = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[Any] | None = None


class ModelRequest(_Strict):
    messages: list[Message]
    params: JsonObject | None = None


class ModelResponse(_Strict):
    content: Any = None
    tool_calls: list[Any] | None = None
    finish_reason: str | None = None


class ModelCalled(_Strict):
    call_id: Name
    provider: Name
    model: Name
    input_tokens: Tokens
    output_tokens: Tokens
    cost_usd: Money
    latency_ms: NonNegNumber
    request: ModelRequest | None = None
    response: ModelResponse | None = None
    confidence: UnitInterval | None = None
    priced: Annotated[
        bool,
        WithJsonSchema({"type": "boolean", "description": "false: no price was known for the model, "
                        "so cost_usd (0) means unknown, not free (absent: priced)"}),
    ] | None = None


class ToolCalled(_Strict):
    call_id: Name
    tool: Name
    args: JsonObject
    status: Literal["ok", "error"]
    result: Any = None
    error: str | None = None
    latency_ms: NonNegNumber
    side_effect: Literal["none", "read", "write"]
    idempotency_key: str | None = None


class PolicyEvaluated(_Strict):
    policy: Name
    action: Name
    decision: Literal["allow", "deny", "require_approval"]
    reason: str
    risk_score: UnitInterval | None = None
    revision: Annotated[
        str,
        StringConstraints(min_length=1, max_length=512),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 512,
                        "description": "the revision of the policy that decided (a policy engine's "
                        "bundle revision), when the runtime asked one"}),
    ] | None = None
    decision_id: Annotated[
        str,
        StringConstraints(min_length=1, max_length=256),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 256,
                        "description": "the policy engine's id of this decision (OPA's decision_id)"}),
    ] | None = None
    arguments: Annotated[
        JsonObject,
        WithJsonSchema({"type": "object", "additionalProperties": True,
                        "description": "the arguments of the action the policy engine was asked "
                        "about (a tool call's args, a change as proposed), recorded by the runtime "
                        "when the decision was not allow: such an action may never run, so what-if "
                        "policy replay can ask another policy about it"}),
    ] | None = None


class ApprovalRequested(_Strict):
    approval_id: Name
    summary: str
    risk: Literal["low", "medium", "high"]
    change_id: Name | None = None
    timeout_s: Annotated[
        Decimal,
        BeforeValidator(_number),
        Field(gt=0, le=MAX_NUMBER),
        WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_NUMBER,
                        "description": "seconds after the platform received the request when it "
                        "expires undecided (absent: no timeout)"}),
    ] | None = None


class ApprovalDecided(_Strict):
    approval_id: Name
    decision: Literal["approved", "rejected"]
    by: Name
    reason: str | None = None
    replayed_from: Annotated[
        str,
        StringConstraints(min_length=1, max_length=512),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 512,
                        "description": "replays only: the approval of the replayed run (run.started's "
                        "replay_of) whose recorded decision this one repeats"}),
    ] | None = None


class ChangeProposed(_Strict):
    change_id: Name
    target: Name
    before: JsonObject
    after: JsonObject
    reversible: bool


class ChangeApplied(_Strict):
    change_id: Name


class ChangeReverted(_Strict):
    change_id: Name
    by: Name
    reason: str | None = None


class BudgetExceeded(_Strict):
    limit: Literal["model_calls", "tokens", "cost_usd", "deadline"]
    limit_value: NonNegNumber
    observed: NonNegNumber


class RunCompleted(_Strict):
    outcome: Literal["succeeded", "failed", "escalated", "cancelled"]
    result: JsonObject | None = None
    error: str | None = None


class FeedbackRecorded(_Strict):
    accepted: bool
    by: Name
    comment: str | None = None


DATA_MODELS: dict[str, type[_Strict]] = {
    "run.started": RunStarted,
    "model.called": ModelCalled,
    "tool.called": ToolCalled,
    "policy.evaluated": PolicyEvaluated,
    "approval.requested": ApprovalRequested,
    "approval.decided": ApprovalDecided,
    "change.proposed": ChangeProposed,
    "change.applied": ChangeApplied,
    "change.reverted": ChangeReverted,
    "budget.exceeded": BudgetExceeded,
    "run.completed": RunCompleted,
    "feedback.recorded": FeedbackRecorded,
}


class _Envelope(_Strict):
    spec: Literal["tachograph.event/1"]
    event_id: Ident
    workspace: Workspace
    run_id: Ident
    seq: Seq
    time: Time
    agent: Agent
    trace_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    span_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")] | None = None


def _event_class(type_name: str, data_model: type[_Strict]) -> type[_Envelope]:
    class_name = "".join(part.title() for part in type_name.split(".")) + "Event"
    annotations: dict[str, Any] = {"type": Literal[type_name], "data": data_model}
    return type(class_name, (_Envelope,), {"__annotations__": annotations, "__module__": __name__})


EVENT_MODELS: dict[str, type[_Envelope]] = {
    name: _event_class(name, model) for name, model in DATA_MODELS.items()
}

_ANY_EVENT: Any = Union[tuple(EVENT_MODELS.values())]  # noqa: UP007
Event: Any = Annotated[_ANY_EVENT, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one event, as published in ``docs/event.schema.json``."""
    schema: dict[str, Any] = EVENT_ADAPTER.json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://tachograph.dev/schema/event/1"
    schema["title"] = "Tachograph event (tachograph.event/1)"
    return schema
