"""OPA's decision-log upload: every decision OPA makes lands in the key's workspace.

Point OPA's ``decision_logs`` at this endpoint (``services[].url`` = the API,
``decision_logs.resource`` = ``/v1/opa/logs``, ``credentials.bearer.token`` = a publisher key);
docs/decisions/0006-opa-decision-logs.md says how decisions map to runs.
"""

from __future__ import annotations

from typing import Any

import jiter
import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api.deps import Publisher, ServicesDep
from api.keys_store import ApiKey
from api.routes.errors import BadBody, BodyTooLarge, UnsupportedMedia
from api.routes.ingest import Item, append_events, decompress, item_of_value
from api.schemas import OpaLogReport, errors
from domain.origins import DECISION_LOG_SOURCE
from ingest import opa_logs
from ingest.otlp import RunCursor

router = APIRouter(tags=["ingest"])

SOURCE_KIND = DECISION_LOG_SOURCE
"""The ledger source kind of decisions from OPA's log (set here, never by a publisher): its runs
are decision logs, not agent runs (``domain.origins``)."""

OPA_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"type": "array", "items": {"type": "object"},
                       "description": "OPA decision log events, usually with Content-Encoding: gzip"}
        }
    },
}


def _decisions(body: bytes, services: ServicesDep) -> list[Any]:
    try:
        value = jiter.from_json(body, float_mode="decimal")
    except ValueError as e:
        raise BadBody(f"body is not JSON: {e}; nothing was stored") from e
    if not isinstance(value, list):
        raise BadBody("body must be a JSON array of OPA decision events; nothing was stored")
    if len(value) > services.limits.max_batch:
        raise BodyTooLarge(f"{len(value)} decisions in one upload; the limit is "
                           f"{services.limits.max_batch} (TACHO_API_MAX_BATCH); nothing was stored")
    return value


def record_decisions(services: ServicesDep, key: ApiKey, values: list[Any]) -> dict[str, Any]:
    """Map decision events to runs per path and day and append the new ones (one lock held)."""
    rejected: list[dict[str, Any]] = []
    runs: dict[str, list[opa_logs.Decision]] = {}
    for n, value in enumerate(values):
        try:
            d = opa_logs.read_decision(value, services.clock)
        except opa_logs.DecisionError as e:
            did = value.get("decision_id") if isinstance(value, dict) else None
            rejected.append({"item": n, "decision_id": did if isinstance(did, str) else None,
                             "reason": str(e)})
            continue
        runs.setdefault(opa_logs.run_id_for(d.path, d.day), []).append(d)
    batch: list[Item] = []
    duplicates = 0
    with services.ingest_lock:
        for run_id, decisions in runs.items():
            rows = services.ledger.store.run_entries(key.workspace, run_id)
            cursor = RunCursor(next_seq=len(rows), event_ids={r.event_id for r in rows if r.event_id})
            events, dup = opa_logs.events_for_run(decisions, key.workspace, run_id, cursor)
            duplicates += dup
            batch.extend(item_of_value(e) for e in events)
        report = append_events(services, key, batch, SOURCE_KIND) if batch else None
    recorded = 0
    for r in report["results"] if report else []:
        if r["status"] == "accepted" and r["event_id"] and not r["event_id"].startswith("opa-run-"):
            recorded += 1
        elif r["status"] == "duplicate":
            duplicates += 1
        elif r["status"] != "accepted":
            rejected.append({"item": None, "decision_id": None,
                             "reason": f"{r['status']}: {r['reason']} (event {r['event_id']})"})
    size = report["size"] if report else services.ledger.store.size()
    return {"decisions": len(values), "recorded": recorded, "duplicates": duplicates,
            "rejected": rejected, "runs": sorted(runs), "size": size}


def _upload(services: ServicesDep, key: ApiKey, body: bytes, encoding: str | None) -> Response:
    values = _decisions(decompress(body, encoding, services.limits), services)
    return Response(orjson.dumps(record_decisions(services, key, values)), media_type="application/json")


@router.post(
    "/v1/opa/logs",
    response_model=OpaLogReport,
    summary="OPA decision-log upload (OPA's decision_logs service)",
    description=(
        "Receives OPA's decision-log uploads: a JSON array of decision events, gzip-compressed "
        "(`Content-Encoding: gzip`) as OPA sends them, or plain. Each decision becomes a "
        "`policy.evaluated` event (with OPA's `decision_id` and bundle `revision`) in a run per "
        "decision path and UTC day, `opa.<path>.<YYYY-MM-DD>`, of the key's workspace, written "
        "under ledger source `opa`. Idempotent on `decision_id`: a retried upload records nothing "
        "twice. Body at most `api_max_body_bytes` compressed and decompressed (413), at most "
        "`api_max_batch` decisions (413); a body that is not a JSON array is 400. Decisions that "
        "cannot be read are listed in `rejected` (200, so OPA does not retry them forever). "
        "Configure OPA with `services[].url` = the API, `decision_logs.resource` = "
        "`/v1/opa/logs`, `credentials.bearer.token` = a key with role publisher."
    ),
    responses=errors(400, 401, 403, 413, 415, 422),
    openapi_extra={"requestBody": OPA_BODY},
)
async def post_opa_logs(request: Request, services: ServicesDep, key: Publisher) -> Response:
    ctype = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise UnsupportedMedia(f"content-type {ctype!r} is not supported: OPA sends application/json")
    body = await request.body()
    return await run_in_threadpool(_upload, services, key, body, request.headers.get("content-encoding"))
