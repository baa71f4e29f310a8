"""The transparency-log read API: latest checkpoint, inclusion and consistency proofs, verification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import LogReader, ServicesDep
from api.routes.audit import audited
from api.schemas import CheckpointOut, ConsistencyProof, InclusionProof, Verification, errors
from domain.approvals import DECISIONS_FROM, required_from
from domain.errors import NotFoundError
from domain.ledger import iso
from domain.verify import verify_log

router = APIRouter(tags=["log"])

Size = Annotated[int, Query(ge=1, le=2**62, description="tree size")]


@router.get(
    "/v1/log/checkpoint",
    response_model=CheckpointOut,
    summary="Latest signed checkpoint",
    description="The newest signed checkpoint (C2SP signed note: origin, size, root hash, "
    "Ed25519 signature). Role auditor.",
    responses=errors(401, 403, 404),
)
def checkpoint(services: ServicesDep, key: LogReader) -> CheckpointOut:
    row = services.ledger.store.latest_checkpoint()
    if row is None:
        raise NotFoundError("no checkpoint has been signed yet")
    return CheckpointOut(
        size=row.size, root=services.ledger.root(row.size).hex(), note=row.note, created=row.created
    )


@router.get(
    "/v1/log/proof/inclusion",
    response_model=InclusionProof,
    summary="RFC 9162 inclusion proof",
    description="Proof that entry `index` is in the tree of `size` entries. Role auditor. Audited.",
    responses=errors(401, 403, 404, 422, 503),
)
def inclusion(
    request: Request,
    services: ServicesDep,
    key: LogReader,
    index: Annotated[int, Query(ge=0, le=2**62, description="entry index")],
    size: Size,
) -> InclusionProof:
    proof = services.ledger.inclusion_proof(index, size)
    out = InclusionProof(
        index=index, size=size, leaf_hash=services.ledger.store.node(0, index).hex(),
        root=services.ledger.root(size).hex(), proof=[h.hex() for h in proof],
    )
    audited(services, key, request, "log.inclusion", index=index, size=size)
    return out


@router.get(
    "/v1/log/proof/consistency",
    response_model=ConsistencyProof,
    summary="RFC 9162 consistency proof",
    description="Proof that the tree of `first` entries is a prefix of the tree of `second`. "
    "Role auditor. Audited.",
    responses=errors(401, 403, 404, 422, 503),
)
def consistency(request: Request, services: ServicesDep, key: LogReader, first: Size,
                second: Size) -> ConsistencyProof:
    proof = services.ledger.consistency_proof(first, second)
    out = ConsistencyProof(
        first=first, second=second, first_root=services.ledger.root(first).hex(),
        second_root=services.ledger.root(second).hex(), proof=[h.hex() for h in proof],
    )
    audited(services, key, request, "log.consistency", first=first, second=second)
    return out


@router.get(
    "/v1/log/verification",
    response_model=Verification,
    summary="Verification status of the whole ledger",
    description="Recomputes every leaf, run chain, the tree and every checkpoint signature from "
    "the stored bytes, and compares every stored index column with them (cached per ledger size; "
    "concurrent calls share one computation). Entries after the last checkpoint are allowed. "
    "Role auditor.",
    responses=errors(401, 403),
)
def verification(services: ServicesDep, key: LogReader) -> Verification:
    store = services.ledger.store
    size = store.size()
    cached = services.verify_cache.get("result")
    if cached is not None and cached.entries == size:
        return cached  # type: ignore[no-any-return]
    with services.verify_lock:  # single flight: callers for the same size share one computation
        cached = services.verify_cache.get("result")
        if cached is not None and cached.entries >= size:
            return cached  # type: ignore[no-any-return]
        size = store.size()
        keys = [k for k in (store.get_meta("initial_vkey"), services.ledger.signer.vkey) if k]
        result = verify_log(
            store.stored_entries(0, size),
            [c.note for c in store.checkpoints() if c.size <= size],
            list(dict.fromkeys(keys)),
            origin=store.get_meta("origin"),
            allow_unsigned_tail=True,
            approvals_from=required_from(store.get_meta(DECISIONS_FROM)),
        )
        services.metrics.verifications.inc()
        out = Verification(**result.to_json(), checked_at=iso(services.clock()))
        services.verify_cache["result"] = out
        return out
