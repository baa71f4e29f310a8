"""Webhook endpoints of a workspace: create, list, delete (admin); delivery status (admin, auditor)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from api.auth import GRANTS, Capability
from api.deps import Admin, require
from api.keys_store import ApiKey
from api.schemas import errors
from api.webhooks import KINDS, MAX_DESCRIPTION, MAX_URL, redacted
from api.webhooks_dispatch import Webhooks
from api.webhooks_store import Endpoint

router = APIRouter(tags=["webhooks"])

WebhookId = Annotated[str, Path(pattern=r"^wh_[0-9a-f]{12}$", description="the endpoint's id")]
StatusReader = Annotated[ApiKey, require(Capability.WEBHOOK_STATUS)]
Kind = Literal["approval.requested", "approval.decided", "halt.set", "budget.exceeded", "run.failed"]
KINDS_DOC = "; ".join(f"`{k}`: {v}" for k, v in KINDS.items())


def get_webhooks(request: Request) -> Webhooks:
    """The app's webhooks."""
    hooks: Webhooks = request.app.state.webhooks
    return hooks


WebhooksDep = Annotated[Webhooks, Depends(get_webhooks)]


class WebhookCreate(BaseModel):
    """A new endpoint of the admin key's workspace."""

    url: str = Field(max_length=MAX_URL, description="http or https URL the notifications are POSTed to")
    kinds: list[Kind] | None = Field(None, max_length=len(KINDS),
                                     description=f"notification kinds to send (default: all). {KINDS_DOC}")
    description: str = Field("", max_length=MAX_DESCRIPTION)


class WebhookOut(BaseModel):
    """An endpoint (never its secret); for auditors the URL is cut to its origin."""

    id: str
    workspace: str
    url: str
    kinds: list[str]
    description: str
    created: str
    from_index: int = Field(description="notifications come from ledger entries at or after this index")
    deliveries: dict[str, int] = Field(description="deliveries kept, by status")


class WebhookCreated(BaseModel):
    """A new endpoint and its signing secret, shown only this once."""

    webhook: WebhookOut
    secret: str = Field(description="the HMAC-SHA256 key of `Tacho-Signature` (see docs/webhooks.md)")


class DeliveryOut(BaseModel):
    """One notification to one endpoint."""

    id: int
    endpoint_id: str
    notification_id: str = Field(description="the same on every attempt and every endpoint: dedupe by it")
    kind: str
    run_id: str | None
    ledger_index: int
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt: str | None = Field(description="when a pending delivery is tried next")
    last_status: int | None = Field(description="HTTP status of the last attempt, if it got one")
    last_error: str | None
    created: str
    updated: str


class DeliveryPage(BaseModel):
    """An endpoint's recent deliveries, newest first."""

    items: list[DeliveryOut]


def _out(hooks: Webhooks, ep: Endpoint, key: ApiKey) -> WebhookOut:
    admin = Capability.KEYS in GRANTS.get(key.role, frozenset())
    return WebhookOut(id=ep.id, workspace=ep.workspace, url=ep.url if admin else redacted(ep.url),
                      kinds=ep.kinds, description=ep.description, created=ep.created,
                      from_index=ep.from_index, deliveries=hooks.store.counts(ep.id))


@router.post("/v1/webhooks", response_model=WebhookCreated, status_code=201,
             summary="Create a webhook endpoint (signing secret shown once)",
             description="Role admin. The URL must be http(s), without credentials, at most "
             f"{MAX_URL} characters; loopback and private addresses are refused unless "
             "TACHO_WEBHOOK_ALLOW_PRIVATE is set. Notifications start from entries appended "
             "from now on. See docs/webhooks.md for the body and the signature.",
             responses=errors(400, 401, 403, 422))
def create_webhook(hooks: WebhooksDep, key: Admin, body: WebhookCreate) -> WebhookCreated:
    ep, secret = hooks.create(key.workspace, body.url, list(body.kinds) if body.kinds is not None else None,
                              body.description)
    return WebhookCreated(webhook=_out(hooks, ep, key), secret=secret)


@router.get("/v1/webhooks", response_model=list[WebhookOut], summary="List the workspace's webhook endpoints",
            description="Roles admin and auditor (auditors see each URL cut to its origin).",
            responses=errors(401, 403))
def list_webhooks(hooks: WebhooksDep, key: StatusReader) -> list[WebhookOut]:
    return [_out(hooks, ep, key) for ep in hooks.store.endpoints(key.workspace)]


@router.get("/v1/webhooks/{webhook_id}", response_model=WebhookOut, summary="One webhook endpoint",
            description="Roles admin and auditor.", responses=errors(401, 403, 404, 422))
def get_webhook(hooks: WebhooksDep, key: StatusReader, webhook_id: WebhookId) -> WebhookOut:
    return _out(hooks, hooks.store.endpoint(key.workspace, webhook_id), key)


@router.delete("/v1/webhooks/{webhook_id}", response_model=WebhookOut,
               summary="Delete a webhook endpoint, its secret and its deliveries",
               description="Role admin. Pending deliveries are dropped, never sent.",
               responses=errors(401, 403, 404, 422))
def delete_webhook(hooks: WebhooksDep, key: Admin, webhook_id: WebhookId) -> WebhookOut:
    out = _out(hooks, hooks.store.endpoint(key.workspace, webhook_id), key)
    hooks.store.delete_endpoint(key.workspace, webhook_id)
    return out


@router.get("/v1/webhooks/{webhook_id}/deliveries", response_model=DeliveryPage,
            summary="Recent deliveries of a webhook endpoint",
            description="Roles admin and auditor. Newest first; the newest 1,000 finished deliveries "
            "of each endpoint are kept, and every pending one.",
            responses=errors(401, 403, 404, 422))
def list_deliveries(
    hooks: WebhooksDep, key: StatusReader, webhook_id: WebhookId,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryPage:
    rows = hooks.deliveries(key.workspace, webhook_id, status, limit)
    return DeliveryPage(items=[DeliveryOut(**d.to_json()) for d in rows])
