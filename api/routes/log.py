"""The transparency-log read API: latest checkpoint, inclusion and consistency proofs, verification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import LogReader, Services, ServicesDep
from api.log_verifier import Status
from api.routes.audit import audited
from api.routes.errors import Unavailable
from api.schemas import CheckpointOut, ConsistencyProof, InclusionProof, Verification, errors
from domain.errors import NotFoundError
from domain.ledger import iso

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


FIRST_WAIT_S = 5.0
"""How long a request waits for the server's first verification round before answering 503."""


@router.get(
    "/v1/log/verification",
    response_model=Verification,
    summary="Verification status of the ledger",
    description="The latest result of verifying the ledger from its stored bytes: every leaf, "
    "run chain, index column, approval, key rotation and checkpoint signature, and the tree. The "
    "server verifies the whole ledger once when it starts, then, every `TACHO_VERIFY_INTERVAL_S`, "
    "only what was appended and signed since: the new entries on top of the verified tree, and a "
    "consistency proof from it to the store's tree now. The answer says how old the result is "
    "(`checked_at`, `age_s`), how many entries it covers against the ledger's size, the kind of "
    "round, and whether one is running; it is not computed in the request. Entries after the last "
    "checkpoint are allowed. 503 while the first round of a server that just started is still "
    "running (after waiting up to 5 s). Role auditor. Not audited.",
    responses=errors(401, 403, 503),
)
def verification(services: ServicesDep, key: LogReader) -> Verification:
    assert services.verification is not None
    status = services.verification.current()
    if status is None:
        status = services.verification.refresh(FIRST_WAIT_S)
    return verification_out(services, status)


def verification_out(services: Services, status: Status | None) -> Verification:
    """The answer for a verification status (503 when there is none yet)."""
    verifier = services.verification
    if status is None or verifier is None:
        raise Unavailable("the first verification of the ledger since the server started is still running; "
                          "retry shortly")
    result = status.result.to_json()
    return Verification(
        **result, kind=status.kind, verified_from=status.verified_from, checked_at=iso(status.checked_at),
        age_s=round(max(0.0, services.clock() - status.checked_at), 3), took_ms=round(status.took_s * 1000, 3),
        ledger_size=services.ledger.store.size(), running=verifier.running,
    )
