"""Replays over HTTP: start one (runs in the background), its status and report, the list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import Engineer, ServicesDep
from api.routes.audit import audited
from api.schemas import ERRORS, ReplayJobOut, ReplayList, ReplayStart, errors
from tachograph.contract.canonical import dumps

router = APIRouter(tags=["replays"])

ReplayId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="the replay id")]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Canonical JSON (money stays an exact decimal)."""
    return Response(dumps(body), status_code=status, media_type="application/json", headers=headers)


@router.post(
    "/v1/replays",
    response_model=ReplayJobOut,
    status_code=202,
    summary="Start a replay of recorded runs",
    description=(
        "Replays finished runs of the key's workspace (a workflow, optionally `since` and `limit`, "
        "or exact `runs`) with agent code from the server's allow-list (`replay_agents`): a "
        "fidelity replay with no candidate, a what-if replay with `model` and/or `prompts`. "
        "Gate thresholds are fractions (0.05 = 5%). Answers 202 at once with the replay id; poll "
        "`GET /v1/replays/{replay_id}`. Replayed runs are recorded in the ledger. "
        "A what-if policy replay (`\"mode\": \"policy\"`) asks a stored policy revision of the "
        "workspace (`policy_revision`) about every recorded tool call and change of the runs, in "
        "an OPA the server starts over the revision's files (`TACHO_OPA_BIN` or `opa` on its "
        "PATH), and gates on `max_new_denials` / `max_new_approvals` (a count, or a rate such as "
        "`\"5%\"`); its report is stored and listed like the others. "
        "Roles engineer, admin. Audited."
    ),
    responses={202: {"description": "queued; `Location` names the status URL"},
               400: ERRORS[400],
               401: ERRORS[401],
               403: ERRORS[403],
               404: {**ERRORS[404], "description": "a run in `runs`, or the `policy_revision`, is "
                     "not the workspace's"},
               422: ERRORS[422],
               503: {**ERRORS[503], "description": "the replay cannot run here: an allow-listed "
                     "agent that does not load, too many replays queued, or (policy replays) no "
                     "opa binary on the server"}},
)
async def start_replay(request: Request, services: ServicesDep, key: Engineer,
                       body: ReplayStart) -> Response:
    job = await run_in_threadpool(services.replays.submit, key.workspace, key.id, body)
    await run_in_threadpool(audited, services, key, request, "replay.start",
                            workspace=key.workspace, replay_id=job.replay_id, agent=job.agent,
                            workflow=body.workflow, runs=len(body.runs), mode=job.mode,
                            policy_revision=body.policy_revision)
    return _json(job.to_json(), 202, {"Location": f"/v1/replays/{job.replay_id}"})


@router.get(
    "/v1/replays",
    response_model=ReplayList,
    summary="Replays of the key's workspace",
    description="Queued, running, finished and failed replays, oldest first, without reports. "
    "Failed replays are kept only until the server restarts. Roles engineer, admin. Audited.",
    responses=errors(401, 403, 503),
)
async def list_replays(request: Request, services: ServicesDep, key: Engineer) -> Response:
    rows = await run_in_threadpool(services.replays.list, key.workspace)
    await run_in_threadpool(audited, services, key, request, "replays.list",
                            workspace=key.workspace, returned=len(rows))
    return _json({"replays": rows})


@router.get(
    "/v1/replays/{replay_id}",
    response_model=ReplayJobOut,
    summary="A replay's status and, once finished, its report",
    description="`status` is queued, running, finished or failed (`error` says why); "
    "`progress` counts replayed runs; `report` (when finished) has the per-replay summary, "
    "the gate result and every run before and after, money as exact decimals. "
    "Another workspace's replay answers 404. Roles engineer, admin. Audited.",
    responses=errors(401, 403, 404, 422, 503),
)
async def get_replay(request: Request, services: ServicesDep, key: Engineer,
                     replay_id: ReplayId) -> Response:
    state, report = await run_in_threadpool(services.replays.state, key.workspace, replay_id)
    await run_in_threadpool(audited, services, key, request, "replay.report",
                            workspace=key.workspace, replay_id=replay_id)
    return _json({**state, "report": report})
