"""Map OpenTelemetry traces (GenAI semantic conventions, OpenInference) to contract events.

Pure functions: decode an OTLP/HTTP body (protobuf or JSON) into span views, then turn the
spans of one trace into the next contract events of its run. One trace is one run
(run id = ``tachograph.run_id`` attribute or the trace id in hex).

Mapping (``gen_ai.operation.name`` or ``openinference.span.kind``):
- ``invoke_agent`` / ``AGENT`` root span: ``run.started`` (its start) and ``run.completed``
  (its end; span status ERROR → ``failed``, otherwise ``succeeded``);
- ``chat`` / ``text_completion`` / ``generate_content`` / ``LLM``: ``model.called``;
- ``execute_tool`` / ``TOOL``: ``tool.called``.
Other spans are not mapped. The first span seen of a run that has no events yet opens it with a
``run.started`` built from the agent span when present, otherwise from the resource.

A model span's request messages, parameters and response are kept as ``request`` and ``response``
(OpenInference ``llm.input_messages`` / ``llm.output_messages`` / ``llm.invocation_parameters``, or
the GenAI conventions' input and output messages), bounded in size: see :mod:`ingest.otlp_messages`.

A model span's cost is its cost attribute when it has one, otherwise its tokens priced by the
platform's price table (:class:`tachograph.prices.PriceTable`, ``TACHO_PRICES`` over
genai-prices' catalogue) at the span's start; a model the table does not know is recorded
unpriced (``cost_usd`` 0 with ``priced: false``), never as free.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from domain.errors import ContractError
from ingest.otlp_messages import exchange
from tachograph.builder import envelope, rfc3339
from tachograph.prices import PriceTable

if TYPE_CHECKING:  # protobuf is imported by the first request decoded (the API server imports this
    # module to start, and the OPA decision logs' mapping uses its RunCursor)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

MODEL_OPS = {"chat", "text_completion", "generate_content", "embeddings"}
TOOL_OPS = {"execute_tool"}
AGENT_OPS = {"invoke_agent", "create_agent"}
SIDE_EFFECTS = {"none", "read", "write"}


@dataclass(frozen=True)
class SpanView:
    """The parts of one OTLP span that the mapping reads."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    error: bool
    status_message: str
    attrs: Mapping[str, Any]
    resource: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        """``agent``, ``model`` or ``tool`` (None: a span the mapping ignores)."""
        op = self.attrs.get("gen_ai.operation.name")
        oi = str(self.attrs.get("openinference.span.kind", "")).upper()
        if op in AGENT_OPS or oi == "AGENT":
            return "agent"
        if op in MODEL_OPS or oi == "LLM":
            return "model"
        if op in TOOL_OPS or oi == "TOOL":
            return "tool"
        return None

    def attr(self, *names: str, default: Any = None) -> Any:
        """The first of ``names`` set on the span, then on its resource."""
        for n in names:
            if n in self.attrs:
                return self.attrs[n]
        for n in names:
            if n in self.resource:
                return self.resource[n]
        return default


def _any(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    if which == "double_value":
        return Decimal(repr(value.double_value))
    return getattr(value, which)


def _attrs(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _any(kv.value) for kv in kvs}


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON mapping wants base64."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id") \
                    and isinstance(v, str):
                try:
                    out[k] = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError as e:
                    raise ContractError(f"OTLP/JSON {k} {v!r} is not hex") from e
            else:
                out[k] = _hex_ids_to_base64(v)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def decode_request(body: bytes, json: bool) -> ExportTraceServiceRequest:
    """Parse an OTLP/HTTP trace export body; raises ContractError naming the problem."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    if json:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise ContractError(f"OTLP/JSON body is not JSON: {e}") from e
        if not isinstance(value, dict):
            raise ContractError("OTLP/JSON body must be an ExportTraceServiceRequest object")
        try:
            json_format.ParseDict(_hex_ids_to_base64(value), req, ignore_unknown_fields=True)
        except json_format.ParseError as e:
            raise ContractError(f"OTLP/JSON body is not an ExportTraceServiceRequest: {e}") from e
        return req
    try:
        req.ParseFromString(body)
    except DecodeError as e:
        raise ContractError(f"OTLP protobuf body does not decode: {e}") from e
    return req


def spans_of(req: ExportTraceServiceRequest) -> list[SpanView]:
    """Every span of a request, with its resource's attributes."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    out: list[SpanView] = []
    for rs in req.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    SpanView(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        name=s.name,
                        start_ns=int(s.start_time_unix_nano),
                        end_ns=int(s.end_time_unix_nano),
                        error=s.status.code == Status.STATUS_CODE_ERROR,
                        status_message=s.status.message,
                        attrs=_attrs(s.attributes),
                        resource=resource,
                    )
                )
    return out


def time_of(ns: int) -> str:
    """RFC 3339 UTC time of a unix time in nanoseconds (microsecond precision)."""
    return rfc3339(ns // 1000 / 1_000_000)


def run_id_of(span: SpanView) -> str:
    """The run a span belongs to."""
    return str(span.attr("tachograph.run_id", default=span.trace_id))


def _int(value: Any) -> int:
    """A count attribute as an int (over its maximum it stays so: the contract refuses it)."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite double
        return 0


def _ms(span: SpanView) -> Decimal:
    return Decimal(max(0, span.end_ns - span.start_ns)) / Decimal(1_000_000)


def _name(value: Any, fallback: str) -> str:
    text = str(value) if value not in (None, "") else fallback
    return text[:512] or fallback


def _agent(span: SpanView) -> dict[str, str]:
    return {
        "id": _name(span.attr("gen_ai.agent.name", "agent.name", "service.name"), "unknown-agent"),
        "version": str(span.attr("gen_ai.agent.version", "service.version", default=""))[:256],
    }


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {"text": value}
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    return {} if value is None else {"value": value}


def model_data(span: SpanView, prices: PriceTable | None = None) -> dict[str, Any]:
    """``model.called`` data of an LLM span (a span without a cost is priced by ``prices``)."""
    data: dict[str, Any] = {
        "call_id": span.span_id,
        "provider": _name(span.attr("gen_ai.provider.name", "gen_ai.system", "llm.provider",
                                    "llm.system"), "unknown"),
        "model": _name(span.attr("gen_ai.request.model", "gen_ai.response.model", "llm.model_name"),
                       "unknown"),
        "input_tokens": _int(span.attr("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                                       "llm.token_count.prompt", default=0)),
        "output_tokens": _int(span.attr("gen_ai.usage.output_tokens",
                                        "gen_ai.usage.completion_tokens",
                                        "llm.token_count.completion", default=0)),
        "cost_usd": _cost(span.attr("tachograph.cost_usd", "gen_ai.usage.cost", "llm.cost.total")),
        "latency_ms": _ms(span),
    }
    if data["cost_usd"] is None:
        _price(data, span, prices if prices is not None else PriceTable())
    request, response = exchange(span.attrs)
    if request is not None:
        data["request"] = request
    reasons = span.attr("gen_ai.response.finish_reasons")
    if response is None and isinstance(reasons, list) and reasons:
        response = {"finish_reason": str(reasons[0])}
    elif response is not None and "finish_reason" not in response and isinstance(reasons, list) and reasons:
        response["finish_reason"] = str(reasons[0])
    if response is not None:
        data["response"] = response
    return data


def _cost(value: Any) -> Decimal | None:
    """A span's own cost attribute as exact money; None when absent or not a money amount."""
    if value is None or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        return None
    if not d.is_finite() or d < 0:
        return None
    exponent = d.as_tuple().exponent
    return d.quantize(Decimal("1e-9")) if isinstance(exponent, int) and exponent < -9 else d


def _price(data: dict[str, Any], span: SpanView, prices: PriceTable) -> None:
    """Set the cost of a model call from its tokens, at the span's start; unknown: unpriced."""
    at = datetime.fromtimestamp(span.start_ns // 1000 / 1_000_000, tz=UTC)
    cost = prices.cost_or_none(data["model"], data["input_tokens"], data["output_tokens"],
                               data["provider"], at=at)
    data["cost_usd"] = Decimal(0) if cost is None else cost
    if cost is None:
        data["priced"] = False


def tool_data(span: SpanView) -> dict[str, Any]:
    """``tool.called`` data of a tool span."""
    data: dict[str, Any] = {
        "call_id": _name(span.attr("gen_ai.tool.call.id"), span.span_id),
        "tool": _name(span.attr("gen_ai.tool.name", "tool.name"), span.name or "tool"),
        "args": _json_object(span.attr("gen_ai.tool.call.arguments", "tool.parameters",
                                       "input.value")),
        "status": "error" if span.error else "ok",
        "latency_ms": _ms(span),
        "side_effect": (
            str(span.attr("tachograph.side_effect"))
            if span.attr("tachograph.side_effect") in SIDE_EFFECTS else "none"
        ),
    }
    if span.error:
        data["error"] = span.status_message or "tool span ended with status ERROR"
    result = span.attr("gen_ai.tool.call.result", "output.value")
    if result is not None:
        data["result"] = result if not isinstance(result, Decimal) else str(result)
    return data


def started_data(opener: SpanView) -> dict[str, Any]:
    """``run.started`` data from the span that opens a run."""
    data: dict[str, Any] = {
        "workflow": _name(opener.attr("tachograph.workflow", "gen_ai.agent.name", "service.name"),
                          opener.name or "otel-trace"),
        "mode": str(opener.attr("tachograph.mode", default="execute")),
        "risk_tier": str(opener.attr("tachograph.risk_tier", default="low")),
        "labels": {"source": "otlp"},
    }
    return data


@dataclass
class RunCursor:
    """What the store already holds for a run: next seq, stored event ids, completed or not."""

    next_seq: int = 0
    event_ids: set[str] = field(default_factory=set)
    completed: bool = False


Check = Callable[[dict[str, Any]], str | None]


def _valid(_event: dict[str, Any]) -> str | None:
    return None


def events_for_run(
    spans: Sequence[SpanView], workspace: str, run_id: str, cursor: RunCursor, check: Check = _valid,
    prices: PriceTable | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The new contract events of one run from its spans (skipping events already stored).

    Returns the events (with contiguous seq after ``cursor.next_seq``) and how many spans
    were already stored (duplicates). ``check`` sees each event as it is mapped and returns why
    it breaks the contract, or None: a rejected event is left out and takes no ``seq``, so one
    bad span (a value over its maximum, say) never leaves a gap that holds back the rest.
    Model spans without a cost are priced by ``prices`` (default: genai-prices' catalogue and
    the simulated models).
    """
    prices = prices if prices is not None else PriceTable()
    spans = sorted(spans, key=lambda s: (s.start_ns, s.span_id))
    mapped = [s for s in spans if s.kind is not None]
    if not mapped:
        return [], 0
    trace_ids = {s.span_id for s in spans}
    agents = [s for s in mapped if s.kind == "agent"]
    root = next((a for a in agents if not a.parent_id or a.parent_id not in trace_ids), None)
    out: list[dict[str, Any]] = []
    dup = 0
    seq = cursor.next_seq

    def add(span: SpanView, etype: str, suffix: str, ns: int, data: dict[str, Any]) -> None:
        nonlocal seq, dup
        eid = f"otel-{span.trace_id}-{span.span_id}-{suffix}"[:128]
        if eid in cursor.event_ids:
            dup += 1
            return
        event = envelope(workspace=workspace, run_id=run_id, seq=seq, etype=etype, time=time_of(ns),
                         agent=_agent(root or span), data=data, event_id=eid, trace_id=span.trace_id,
                         span_id=span.span_id)
        if check(event) is not None:
            return
        out.append(event)
        seq += 1

    if cursor.next_seq == 0:
        opener = root or mapped[0]
        add(opener, "run.started", "start", min(s.start_ns for s in mapped), started_data(opener))
    for s in mapped:
        if s.kind == "model":
            add(s, "model.called", "model", s.end_ns, model_data(s, prices))
        elif s.kind == "tool":
            add(s, "tool.called", "tool", s.end_ns, tool_data(s))
    if root is not None and not cursor.completed:
        outcome = "failed" if root.error else "succeeded"
        done: dict[str, Any] = {"outcome": outcome}
        if root.error:
            done["error"] = root.status_message or "agent span ended with status ERROR"
        add(root, "run.completed", "end", root.end_ns, done)
    return out, dup


def group_by_run(spans: Iterable[SpanView]) -> dict[str, list[SpanView]]:
    """Spans grouped by the run they belong to, in first-seen order."""
    runs: dict[str, list[SpanView]] = {}
    for s in spans:
        runs.setdefault(run_id_of(s), []).append(s)
    return runs
