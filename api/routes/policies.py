"""Policy revisions over HTTP: publish, activate, read and diff them; OPA's bundle endpoint.

Point OPA's ``bundles`` at ``GET /v1/policy/bundle.tar.gz`` (``services[].url`` = the API's
``/v1``, ``resource`` = ``policy/bundle.tar.gz``, ``credentials.bearer.token`` = a publisher key;
``tacho policy opa-config`` prints the whole configuration). The bundle is the active revision
of the key's workspace; with ``polling.long_polling_timeout_seconds`` OPA holds the request open
and gets a new revision the moment it is activated.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.audit_trail import actor_of
from api.auth import Capability
from api.deps import ServicesDep, require
from api.keys_store import ApiKey
from api.policies import PolicyNotFoundError
from api.schemas import errors
from ingest.policies import MAX_FILES, MAX_MESSAGE, REVISION, SIDE_EFFECTS, bundle_bytes

router = APIRouter(tags=["policies"])

PolicyReader = Annotated[ApiKey, require(Capability.READ_POLICY)]
PolicyAdmin = Annotated[ApiKey, require(Capability.MANAGE_POLICY)]
BundleReader = Annotated[ApiKey, require(Capability.POLICY_BUNDLE)]

BUNDLE_TYPE = "application/vnd.openpolicyagent.bundles"
"""The content type that tells OPA this server holds long polls (OPA also accepts it as a bundle)."""
MAX_WAIT_S = 120
POLL_S = 0.25
MAX_LONG_POLLS_PER_WORKSPACE = 32
"""Long polls one workspace may hold open at once; beyond it a request is answered at once (OPA
polls again after its delay), so one tenant's sidecars cannot tie up what all share."""
_long_polls: dict[str, int] = {}
RevisionId = Annotated[str, Path(description="a revision id, e.g. `3-5f2a9c1e0b7d`",
                                 pattern=f"^{REVISION}$")]


class PublishBody(BaseModel):
    """A policy revision: its files, the workspace's fail-closed setting, and why."""

    model_config = ConfigDict(extra="forbid")
    files: dict[str, str] = Field(
        description=f"path → content: `.rego` files and `data.json` files, at most {MAX_FILES} "
        "files and 1 MiB together", max_length=MAX_FILES)
    fail_closed: list[str] | None = Field(
        None, max_length=len(SIDE_EFFECTS),
        description="side effects (`none`, `read`, `write`) whose actions are denied while OPA "
        "cannot be reached; default `[\"write\"]`")
    message: str | None = Field(None, max_length=MAX_MESSAGE, description="what changed and why")
    activate: bool = Field(False, description="put the revision in force at once")
    reason: str | None = Field(None, max_length=MAX_MESSAGE, description="why it is activated")


class ActivateBody(BaseModel):
    """Which revision to put in force, and why."""

    model_config = ConfigDict(extra="forbid")
    revision: str = Field(pattern=f"^{REVISION}$")
    reason: str | None = Field(None, max_length=MAX_MESSAGE)


def _state(services: ServicesDep, workspace: str) -> dict[str, Any]:
    found = services.policies.active(workspace)
    if found is None:
        return {"workspace": workspace, "active": None, "fail_closed": ["write"]}
    rev, act = found
    return {"workspace": workspace, "active": {**rev.summary(), **act.to_json()},
            "fail_closed": list(rev.fail_closed)}


@router.get(
    "/v1/policy",
    summary="The policy in force in the key's workspace",
    description="Roles publisher (the agent runtime reads the workspace's fail-closed setting "
    "here), admin. `active` is null until a revision is activated; `fail_closed` is then the "
    "default, `[\"write\"]`.",
    responses=errors(401, 403),
)
def policy_state(services: ServicesDep, key: BundleReader) -> JSONResponse:
    return JSONResponse(_state(services, key.workspace))


@router.get(
    "/v1/policy/bundle.tar.gz",
    summary="The active policy as an OPA bundle",
    description="Roles publisher, admin: OPA's bundle service API. A gzipped tarball of the "
    "active revision's files with a `.manifest` whose `revision` is the revision id (OPA reports "
    "it with every decision). `ETag` is the revision; `If-None-Match` equal to it answers 304. "
    "With `Prefer: wait=N` (OPA's long polling) a request whose ETag is current waits up to N "
    f"seconds (at most {MAX_WAIT_S}) for another revision to be activated. 404 while no revision "
    "is in force.",
    responses={200: {"content": {BUNDLE_TYPE: {}}, "description": "the bundle"},
               304: {"description": "the active revision is the one named in If-None-Match"},
               **errors(401, 403, 404)},
)
async def policy_bundle(
    request: Request,
    services: ServicesDep,
    key: BundleReader,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
    prefer: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    wait = _wait_of(prefer)
    if wait and _long_polls.get(key.workspace, 0) >= MAX_LONG_POLLS_PER_WORKSPACE:
        wait = 0.0
    if not wait:
        return await _bundle_answer(services, key, if_none_match, request, 0.0)
    _long_polls[key.workspace] = _long_polls.get(key.workspace, 0) + 1
    try:
        return await _bundle_answer(services, key, if_none_match, request, wait)
    finally:
        left = _long_polls[key.workspace] - 1
        if left:
            _long_polls[key.workspace] = left
        else:
            del _long_polls[key.workspace]


async def _bundle_answer(services: ServicesDep, key: ApiKey, if_none_match: str | None,
                         request: Request, wait: float) -> Response:
    give_up = time.monotonic() + wait
    while True:
        found = await run_in_threadpool(services.policies.active, key.workspace)
        if found is None:
            if time.monotonic() >= give_up:
                raise PolicyNotFoundError(f"no policy revision is in force in workspace {key.workspace!r}")
        else:
            rev = found[0]
            etag = f'"{rev.revision}"'
            headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Authorization"}
            if if_none_match is None or etag not in [t.strip() for t in if_none_match.split(",")]:
                body = bundle_bytes(rev, key.workspace)
                return Response(body, media_type=BUNDLE_TYPE, headers=headers)
            if time.monotonic() >= give_up:
                return Response(status_code=304, headers={**headers, "Content-Type": BUNDLE_TYPE})
        if await request.is_disconnected():  # OPA went away: answer now (nobody reads it)
            give_up = 0.0  # rather than hold the server's shutdown until the wait ends
            continue
        await asyncio.sleep(POLL_S)


def _wait_of(prefer: str | None) -> float:
    """Seconds a long poll may wait, from ``Prefer: modes=snapshot,delta;wait=N`` (0 without)."""
    for part in (prefer or "").replace(",", ";").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return float(min(max(int(value.strip()), 0), MAX_WAIT_S))
            except ValueError:
                return 0.0
    return 0.0


@router.get(
    "/v1/policy/revisions",
    summary="Every policy revision of the key's workspace, newest first",
    description="Roles auditor, engineer, admin. Each revision's digest, settings, files (paths "
    "and sizes), who published it, whether it is in force and whether it ever was; and every "
    "activation, newest first.",
    responses=errors(401, 403),
)
def list_revisions(services: ServicesDep, key: PolicyReader) -> JSONResponse:
    return JSONResponse(services.policies.fold(key.workspace).listing())


@router.get(
    "/v1/policy/revisions/{revision}",
    summary="One policy revision, with its files",
    description="Roles auditor, engineer, admin. `sources` holds the exact files that judged "
    "every decision reporting this revision.",
    responses=errors(401, 403, 404, 422),
)
def get_revision(services: ServicesDep, key: PolicyReader, revision: RevisionId) -> JSONResponse:
    rev = services.policies.revision(key.workspace, revision)
    return JSONResponse(services.policies.fold(key.workspace).revision_json(rev, files=True))


@router.get(
    "/v1/policy/diff",
    summary="How one policy revision differs from another",
    description="Roles auditor, engineer, admin. Per file: added, removed, changed or same, with "
    "a unified diff. Without `from`, the diff is from nothing.",
    responses=errors(401, 403, 404, 422),
)
def diff_revisions(
    services: ServicesDep,
    key: PolicyReader,
    to: Annotated[str, Query(pattern=f"^{REVISION}$", description="the newer revision")],
    from_: Annotated[str | None, Query(alias="from", pattern=f"^{REVISION}$",
                                       description="the older revision")] = None,
) -> JSONResponse:
    files = services.policies.diff(key.workspace, from_, to)
    return JSONResponse({"workspace": key.workspace, "from": from_, "to": to, "files": files})


@router.post(
    "/v1/policy/revisions",
    summary="Publish a policy revision (and activate it)",
    description="Role admin. Recorded as a `policy.published` platform record (and "
    "`policy.activated` with `activate`). Checked with `opa check` first when the server has OPA "
    "(`TACHO_OPA_BIN`): a policy OPA would refuse is refused with OPA's message (422). 201 with a "
    "new revision; 200 when the files and settings equal the latest revision's (nothing new "
    "is published).",
    status_code=201,
    responses={200: {"description": "the latest revision is identical; it is answered"},
               **errors(400, 401, 403, 422, 503)},
)
def publish_revision(services: ServicesDep, key: PolicyAdmin, body: PublishBody) -> JSONResponse:
    fold = services.policies.fold(key.workspace)
    before = len(fold.revisions)
    rev, act = services.policies.publish(
        actor_of(key), key.workspace, body.files, fail_closed=body.fail_closed,
        message=body.message, activate=body.activate, reason=body.reason)
    after = services.policies.fold(key.workspace)
    out = after.revision_json(rev)
    out["activation"] = act.to_json() if act else None
    return JSONResponse(out, status_code=201 if len(after.revisions) > before else 200)


@router.put(
    "/v1/policy/active",
    summary="Put a published revision in force",
    description="Role admin. Recorded as a `policy.activated` platform record; OPA loads it at "
    "its next bundle poll (at once with long polling). Rolling back is activating an older "
    "revision. `changed: false` when it is in force already (nothing written).",
    responses=errors(400, 401, 403, 404, 422, 503),
)
def activate_revision(services: ServicesDep, key: PolicyAdmin, body: ActivateBody) -> JSONResponse:
    act = services.policies.activate(actor_of(key), key.workspace, body.revision, body.reason)
    state = _state(services, key.workspace)
    state["changed"] = act is not None
    return JSONResponse(state)
