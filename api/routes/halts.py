"""Kill switches over HTTP: read the halts in force (agents poll this), set and clear them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Capability
from api.deps import Services, ServicesDep, require
from api.halts import MAX_REASON, RUN_ID, HaltChange
from api.keys_store import ApiKey
from api.schemas import errors

router = APIRouter(tags=["halts"])

HaltReader = Annotated[ApiKey, require(Capability.READ_HALTS)]
Halter = Annotated[ApiKey, require(Capability.HALT)]

SCOPE_DOC = ("scope: `workspace` (no target: the key's workspace), `workflow` (a workflow name), "
             "`agent` (an agent id) or `run` (a run id). Encode the target as one path segment "
             "(`/` as `%2F`, `.` and `..` as `%2E`, `%2E%2E`); names with `/` or `..` work.")


class HaltOut(BaseModel):
    """One halt in force."""

    scope: str = Field(description="workspace | workflow | agent | run")
    target: str = Field(description="what it stops: the workspace, workflow name, agent id or run id")
    reason: str
    by: str = Field(description="who set it: the key's name and id")
    at: str = Field(description="when it was set (RFC 3339)")
    index: int = Field(description="ledger index of its `halt.set` record")


class HaltsOut(BaseModel):
    """The halts in force in the key's workspace."""

    workspace: str
    etag: str = Field(description="also the `ETag` header: send it as `If-None-Match` for a 304")
    halts: list[HaltOut]


class HaltChanged(BaseModel):
    """What a set or clear did."""

    halt: HaltOut
    changed: bool = Field(description="false: the halt was in force already and nothing was written")
    record_index: int | None = Field(description="ledger index of the `halt.set` / `halt.cleared` record")


class SetBody(BaseModel):
    """Why the target is halted."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(max_length=MAX_REASON, description=f"1-{MAX_REASON} characters, not only blanks",
                        json_schema_extra={"minLength": 1, "pattern": "[^ \t\r\n]"})


class ClearBody(BaseModel):
    """Why the halt ends (optional)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=MAX_REASON)


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/v1/halts",
    response_model=HaltsOut,
    summary="The halts in force in the key's workspace",
    description="Roles publisher (agents poll this before their steps), engineer, approver, admin. "
    "Answers an `ETag`; with `If-None-Match` equal to it, 304 and no body (nothing changed).",
    responses={304: {"description": "the halts are unchanged since that ETag"}, **errors(401, 403)},
)
def list_halts(
    services: ServicesDep,
    key: HaltReader,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    halts = services.halts.current(key.workspace)
    headers = {"ETag": halts.etag, "Cache-Control": "private, no-cache", "Vary": "Authorization"}
    if if_none_match is not None and _matches(if_none_match, halts.etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(halts.to_json(), headers=headers)


def _changed(change: HaltChange, created_status: int) -> JSONResponse:
    body: dict[str, Any] = {"halt": change.halt.to_json(), "changed": change.changed,
                            "record_index": change.record_index}
    return JSONResponse(body, status_code=created_status if change.changed else 200)


_SET: dict[str, Any] = {
    "response_model": HaltChanged,
    "summary": "Halt a workspace, workflow, agent or run",
    "description": "Roles approver, admin. Running agents stop at their next step (they see the "
    "halt within about a second); new runs are refused. Recorded as a `halt.set` platform record. "
    "201 when set; 200 with `changed: false` when that target was halted already (nothing "
    "written, the first halt stays). A target holding a line break matches no route: 404. "
    + SCOPE_DOC,
    "responses": {201: {"model": HaltChanged, "description": "halted"},
                  **errors(400, 401, 403, 404, 422, 503)},
}
_CLEAR: dict[str, Any] = {
    "response_model": HaltChanged,
    "summary": "Clear a halt",
    "description": "Roles approver, admin. New runs may start again. Recorded as a `halt.cleared` "
    "platform record. 404 when no halt is in force on that target. " + SCOPE_DOC,
    "responses": errors(400, 401, 403, 404, 422, 503),
}


WorkflowTarget = Annotated[str, Path(description="the workflow name (1-512 characters), one encoded "
                                     "segment", json_schema_extra={"minLength": 1, "maxLength": 512})]
AgentTarget = Annotated[str, Path(description="the agent id (1-512 characters), one encoded segment",
                                  json_schema_extra={"minLength": 1, "maxLength": 512})]
RunTarget = Annotated[str, Path(description="the run id", json_schema_extra={"pattern": RUN_ID})]
Clear = Annotated[ClearBody | None, Body()]


def _set(services: Services, key: ApiKey, scope: str, target: str | None, body: SetBody) -> JSONResponse:
    return _changed(services.halts.set(key, scope, target, body.reason), 201)


def _clear(services: Services, key: ApiKey, scope: str, target: str | None, body: ClearBody | None) -> JSONResponse:
    return _changed(services.halts.clear(key, scope, target, body.reason if body else None), 200)


@router.put("/v1/halts/workspace", **_SET)
def set_workspace_halt(services: ServicesDep, key: Halter, body: SetBody) -> JSONResponse:
    return _set(services, key, "workspace", None, body)


@router.put("/v1/halts/workflow/{target:path}", **_SET)
def set_workflow_halt(services: ServicesDep, key: Halter, target: WorkflowTarget, body: SetBody) -> JSONResponse:
    return _set(services, key, "workflow", target, body)


@router.put("/v1/halts/agent/{target:path}", **_SET)
def set_agent_halt(services: ServicesDep, key: Halter, target: AgentTarget, body: SetBody) -> JSONResponse:
    return _set(services, key, "agent", target, body)


@router.put("/v1/halts/run/{target:path}", **_SET)
def set_run_halt(services: ServicesDep, key: Halter, target: RunTarget, body: SetBody) -> JSONResponse:
    return _set(services, key, "run", target, body)


@router.delete("/v1/halts/workspace", **_CLEAR)
def clear_workspace_halt(services: ServicesDep, key: Halter, body: Clear = None) -> JSONResponse:
    return _clear(services, key, "workspace", None, body)


@router.delete("/v1/halts/workflow/{target:path}", **_CLEAR)
def clear_workflow_halt(services: ServicesDep, key: Halter, target: WorkflowTarget, body: Clear = None) -> JSONResponse:
    return _clear(services, key, "workflow", target, body)


@router.delete("/v1/halts/agent/{target:path}", **_CLEAR)
def clear_agent_halt(services: ServicesDep, key: Halter, target: AgentTarget, body: Clear = None) -> JSONResponse:
    return _clear(services, key, "agent", target, body)


@router.delete("/v1/halts/run/{target:path}", **_CLEAR)
def clear_run_halt(services: ServicesDep, key: Halter, target: RunTarget, body: Clear = None) -> JSONResponse:
    return _clear(services, key, "run", target, body)


# any other shape (an unknown scope, a scope without its target, a target for the workspace):
# answered by the same service, whose 422 names what is wrong; not in the schema
@router.put("/v1/halts/{scope}", include_in_schema=False)
def set_other(services: ServicesDep, key: Halter, scope: str, body: SetBody) -> JSONResponse:
    return _set(services, key, scope, None, body)


@router.put("/v1/halts/{scope}/{target:path}", include_in_schema=False)
def set_other_target(services: ServicesDep, key: Halter, scope: str, target: str, body: SetBody) -> JSONResponse:
    return _set(services, key, scope, target, body)


@router.delete("/v1/halts/{scope}", include_in_schema=False)
def clear_other(services: ServicesDep, key: Halter, scope: str, body: Clear = None) -> JSONResponse:
    return _clear(services, key, scope, None, body)


@router.delete("/v1/halts/{scope}/{target:path}", include_in_schema=False)
def clear_other_target(services: ServicesDep, key: Halter, scope: str, target: str, body: Clear = None) -> JSONResponse:
    return _clear(services, key, scope, target, body)
