"""API key management for admins (keys of the admin key's own workspace)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import Admin, ServicesDep
from api.keys_store import parse_expiry
from api.schemas import KeyCreate, KeyCreated, KeyOut, errors

router = APIRouter(tags=["keys"])

KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


@router.get("/v1/keys", response_model=list[KeyOut], summary="List API keys of the workspace",
            description="Role admin.", responses=errors(401, 403))
def list_keys(services: ServicesDep, key: Admin) -> list[KeyOut]:
    return [KeyOut(**k.to_json()) for k in services.keys.list(key.workspace)]


@router.post("/v1/keys", response_model=KeyCreated, status_code=201,
             summary="Create an API key in the workspace (secret shown once)",
             description="Role admin.", responses=errors(400, 401, 403, 422))
def create_key(services: ServicesDep, key: Admin, body: KeyCreate) -> KeyCreated:
    expires = parse_expiry(body.expires, services.clock()) if body.expires else None
    row, secret = services.keys.create(key.workspace, body.role, expires, body.label)
    return KeyCreated(key=KeyOut(**row.to_json()), secret=secret)


@router.delete("/v1/keys/{key_id}", response_model=KeyOut, summary="Revoke an API key",
               description="Role admin.", responses=errors(401, 403, 404, 422))
def revoke_key(services: ServicesDep, key: Admin, key_id: KeyId) -> KeyOut:
    return KeyOut(**services.keys.revoke(key_id, key.workspace).to_json())
