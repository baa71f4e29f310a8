"""Ingest over HTTP: contract events (JSON array or NDJSON) and OTLP traces."""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import jiter
import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api.deps import Limits, Publisher, ServicesDep
from api.keys_store import ApiKey
from api.routes.errors import BadBody, BodyTooLarge, UnsupportedMedia
from api.schemas import IngestReport, errors
from domain.errors import ContractError
from domain.ledger import Parsed, ParseResult, slim
from domain.ports import Incoming, Source
from ingest import otlp
from tachograph.contract.canonical import MAX_EVENT_BYTES, dumps, parse_event, validate_event

router = APIRouter(tags=["ingest"])

EVENTS_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "description": "one event object or an array of events (docs/event.schema.json); "
                "items that break the contract (even non-objects) are quarantined one by one",
                "oneOf": [
                    {"type": "array", "items": {}},
                    {"type": "object"},
                ],
            }
        },
        "application/x-ndjson": {
            "schema": {"type": "string", "description": "one event per line"}
        },
    },
}
TRACES_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/x-protobuf": {
            "schema": {"type": "string", "format": "binary",
                       "description": "OTLP ExportTraceServiceRequest (protobuf)"}
        },
        "application/json": {
            "schema": {"type": "object", "description": "OTLP ExportTraceServiceRequest (JSON)"}
        },
    },
}


def decompress(body: bytes, content_encoding: str | None, limits: Limits) -> bytes:
    """A body decoded per its Content-Encoding (gzip, deflate or none) within the size limit.

    CPU-bound for a large body: routes call it off the event loop.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMedia(f"content-encoding {encoding!r} is not supported (use gzip or none)")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limits.max_body_bytes + 1)
    except zlib.error as e:
        raise BadBody(f"body is not valid {encoding}: {e}") from e
    if len(out) > limits.max_body_bytes or d.unconsumed_tail:
        raise BodyTooLarge(f"decompressed body is over the {limits.max_body_bytes}-byte limit")
    if not d.eof:
        raise BadBody(f"{encoding} body is truncated")
    return out


class Item(NamedTuple):
    """One submitted event: the bytes to keep, its workspace if readable, its validation."""

    raw: bytes
    workspace: str | None
    result: ParseResult


def _ws(value: Any) -> str | None:
    ws = value.get("workspace") if isinstance(value, dict) else None
    return ws if isinstance(ws, str) else None


def item_of_value(value: Any) -> Item:
    """Validate an already-parsed event (the body is parsed once, not once more per event)."""
    try:
        event, canonical = validate_event(value)
        if len(canonical) > MAX_EVENT_BYTES:
            raise ContractError(f"event is {len(canonical)} bytes, over the {MAX_EVENT_BYTES}-byte limit",
                                [("(event)", "oversize")])
    except ContractError as e:
        return Item(_dump(value), _ws(value), (None, None, f"contract: {e}"))
    return Item(canonical, event["workspace"], (slim(event), canonical, None))


def item_of_line(line: bytes) -> Item:
    """Validate one NDJSON line."""
    try:
        event, canonical = parse_event(line)
    except ContractError as e:
        return Item(line, _workspace_of(line), (None, None, f"contract: {e}"))
    return Item(line, event["workspace"], (slim(event), canonical, None))


def _split(body: bytes, content_type: str) -> list[Item]:
    """The events of a JSON array / object / NDJSON body, each validated."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in ("application/x-ndjson", "application/jsonl", "application/jsonlines", "text/plain"):
        return [item_of_line(line) for line in (x.strip() for x in body.split(b"\n")) if line]
    if ctype not in ("application/json", ""):
        raise UnsupportedMedia(
            f"content-type {ctype!r} is not supported: send application/json (an array of events) "
            "or application/x-ndjson (one event per line)"
        )
    try:
        value = jiter.from_json(body, float_mode="decimal")
    except ValueError as e:
        raise BadBody(f"body is not JSON: {e}; nothing was stored") from e
    if isinstance(value, dict):
        return [item_of_value(value)]
    if not isinstance(value, list):
        raise BadBody("body must be a JSON array of events or one event object; nothing was stored")
    return [item_of_value(v) for v in value]


def _dump(value: Any) -> bytes:
    try:
        return dumps(value)
    except (TypeError, ValueError):  # a non-finite number: keep something the ledger can quarantine
        return repr(value).encode()


def _workspace_of(raw: bytes) -> str | None:
    try:
        value = jiter.from_json(raw, float_mode="decimal")
    except ValueError:
        return None
    return _ws(value)


STATUSES = ("accepted", "duplicate", "held", "quarantined", "rejected")


def append_events(services: ServicesDep, key: ApiKey, batch: list[Item], kind: str) -> dict[str, Any]:
    """Check the workspace of each event, append the rest in one transaction, report per item.

    The report is a plain dict (an ``IngestReport``): per-item models cost more than the append.
    """
    results: list[dict[str, Any] | None] = [None] * len(batch)
    items: list[Incoming] = []
    parsed: list[Parsed] = []
    positions: list[int] = []
    name = f"{key.workspace}/{key.id}"
    for n, (raw, ws, result) in enumerate(batch):
        if ws is not None and ws != key.workspace:
            results[n] = {
                "item": n, "status": "rejected",
                "reason": f"workspace: this key writes to workspace {key.workspace!r}, not {ws!r}",
                "event_id": None, "run_id": None, "index": None,
            }
            continue
        incoming = Incoming(raw, Source(kind=kind, name=name, line=n), key.workspace)
        items.append(incoming)
        parsed.append(Parsed(incoming, *result))
        positions.append(n)
    report = services.ledger.append(items, parsed=parsed) if items else None
    if report is not None:
        for n, o in zip(positions, report.results, strict=True):
            results[n] = {"item": n, "status": o.status, "reason": o.reason, "event_id": o.event_id,
                          "run_id": o.run_id, "index": o.index}
    done = [r for r in results if r is not None]
    counts = dict.fromkeys(STATUSES, 0)
    for r in done:
        counts[r["status"]] += 1
    for status, count in counts.items():
        if count:
            services.metrics.ingested.labels(kind, status).inc(count)
    return {
        "accepted": counts["accepted"], "duplicates": counts["duplicate"], "held": counts["held"],
        "quarantined": counts["quarantined"], "rejected": counts["rejected"],
        "size": report.size if report else services.ledger.store.size(), "results": done,
    }


@router.post(
    "/v1/events",
    response_model=IngestReport,
    summary="Append events (JSON array or NDJSON)",
    description=(
        "Validates and appends events through the same path as Kafka ingest, in one ledger "
        "transaction. Each item gets a result: accepted (with its ledger index), duplicate, held "
        "(waiting for an earlier seq), quarantined (kept with the reason) or rejected (event of "
        "another workspace; not stored). gzip bodies are accepted. Needs role publisher."
    ),
    responses=errors(400, 401, 403, 413, 415, 422),
    openapi_extra={"requestBody": EVENTS_BODY},
)
async def post_events(request: Request, services: ServicesDep, key: Publisher) -> Response:
    body = await request.body()
    ctype = request.headers.get("content-type", "application/json")
    encoding = request.headers.get("content-encoding")
    return await run_in_threadpool(_ingest, services, key, body, encoding, ctype)


def _ingest(services: ServicesDep, key: ApiKey, body: bytes, encoding: str | None, ctype: str) -> Response:
    """Decompress, split, validate and append one request body (off the event loop); the report."""
    batch = _split(decompress(body, encoding, services.limits), ctype)
    if len(batch) > services.limits.max_batch:
        raise BodyTooLarge(f"{len(batch)} events in one request; the limit is {services.limits.max_batch}")
    report = append_events(services, key, batch, "http")
    return Response(orjson.dumps(report), media_type="application/json")


def _otlp_events(services: ServicesDep, key: ApiKey, spans: list[otlp.SpanView]) -> tuple[int, str]:
    """Map spans to events run by run and append them; return (rejected spans, message).

    A span whose event breaks the contract (e.g. a token count over its maximum) is quarantined
    with the reason and takes no ``seq``: the run's other events stay contiguous and land.
    """
    rejected, reasons = 0, []
    limit = services.limits.max_batch
    with services.ingest_lock:
        batch: list[Item] = []

        def check(event: dict[str, Any]) -> str | None:
            item = item_of_value(event)
            batch.append(item)
            if len(batch) > limit:
                raise BodyTooLarge(f"the spans map to more than {limit} events in one request; "
                                   f"the limit is {limit} (TACHO_API_MAX_BATCH); nothing was stored")
            return item.result[2]

        for run_id, run_spans in otlp.group_by_run(spans).items():
            rows = services.ledger.store.run_entries(key.workspace, run_id)
            cursor = otlp.RunCursor(
                next_seq=len(rows),
                event_ids={r.event_id for r in rows if r.event_id},
                completed=any(r.event_type == "run.completed" for r in rows),
            )
            otlp.events_for_run(run_spans, key.workspace, run_id, cursor, check, services.prices)
        if batch:
            report = append_events(services, key, batch, "otlp")
            for r in report["results"]:
                if r["status"] in ("quarantined", "rejected"):
                    rejected += 1
                    reasons.append(r["reason"] or r["status"])
    return rejected, "; ".join(reasons[:5])


def _traces(services: ServicesDep, key: ApiKey, body: bytes, encoding: str | None, as_json: bool) -> Response:
    """Decode, map and append one OTLP export (off the event loop); the export response."""
    # protobuf is imported by the first trace export, not at the server's start
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    body = decompress(body, encoding, services.limits)
    req = otlp.decode_request(body, json=as_json)
    spans = otlp.spans_of(req)
    if len(spans) > services.limits.max_batch:
        raise BodyTooLarge(f"{len(spans)} spans in one request; the limit is "
                           f"{services.limits.max_batch} (TACHO_API_MAX_BATCH); nothing was stored")
    rejected, message = _otlp_events(services, key, spans)
    resp = ExportTraceServiceResponse()
    if rejected:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    if as_json:
        return Response(json_format.MessageToJson(resp), media_type="application/json")
    return Response(resp.SerializeToString(), media_type="application/x-protobuf")


@router.post(
    "/v1/traces",
    summary="Ingest OpenTelemetry traces (OTLP/HTTP)",
    description=(
        "OTLP/HTTP trace export in protobuf (`application/x-protobuf`) or JSON, optionally gzip. "
        "GenAI semantic conventions (`gen_ai.operation.name` chat / execute_tool / invoke_agent, "
        "`gen_ai.request.model`, `gen_ai.usage.*`, `gen_ai.provider.name`) and OpenInference "
        "attributes (`openinference.span.kind`, `llm.model_name`, `llm.token_count.*`, "
        "`tool.name`) become contract events of the key's workspace; one trace is one run. "
        "At most `api_max_batch` (10,000) spans, and events mapped from them, per request (413 "
        "beyond). A span whose event breaks the contract (e.g. a value over its maximum, see "
        "docs/ingest.md) is quarantined with the reason and counted in `partial_success`; the "
        "run's other spans still land. Needs role publisher."
    ),
    responses={
        200: {"description": "ExportTraceServiceResponse (partial_success names rejected spans)",
              "content": {"application/x-protobuf": {}, "application/json": {}}},
        **errors(400, 401, 403, 413, 415, 422),
    },
    openapi_extra={"requestBody": TRACES_BODY},
    response_class=Response,
)
async def post_traces(request: Request, services: ServicesDep, key: Publisher) -> Response:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in ("application/x-protobuf", "application/json"):
        raise UnsupportedMedia(
            f"content-type {ctype!r} is not OTLP: send application/x-protobuf or application/json"
        )
    body = await request.body()
    encoding = request.headers.get("content-encoding")
    # decoding a large export takes seconds of CPU: never on the event loop (/healthz stays live)
    return await run_in_threadpool(_traces, services, key, body, encoding, ctype == "application/json")
