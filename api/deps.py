"""Request dependencies as ``Annotated`` aliases: services, the current key, role checks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.approvals import ApprovalSignals
from api.audit_trail import AuditTrail
from api.auth import Capability, check_api
from api.halts import HaltService
from api.keys_store import ApiKey, AuthError, KeyStore
from api.log_verifier import LogVerifier
from api.metrics import Metrics
from api.policies import PolicyService
from api.settings import Settings
from domain.ledger import Ledger
from projections.run_index import RunIndex
from projections.tracking import ReadModel
from tachograph.prices import PriceTable

if TYPE_CHECKING:  # both are built by the app; importing them here would cost the server's start
    from api.replay_jobs import ReplayJobs
    from api.witness_pusher import WitnessPusher


@dataclass
class Limits:
    """Request limits of the HTTP API."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 10_000


@dataclass
class Services:
    """Everything a request handler may use, built once by ``create_app``."""

    settings: Settings
    ledger: Ledger
    keys: KeyStore
    runs: RunIndex
    audit: AuditTrail
    metrics: Metrics
    limits: Limits
    clock: Callable[[], float]
    replays: ReplayJobs
    halts: HaltService
    policies: PolicyService
    prices: PriceTable = field(default_factory=PriceTable)  # TACHO_PRICES over genai-prices' data
    ingest_lock: threading.Lock = field(default_factory=threading.Lock)
    verification: LogVerifier | None = None  # the verification status (built by create_app)
    witnesses: WitnessPusher | None = None  # started by the app's lifespan (TACHO_WITNESSES)
    approval_signals: ApprovalSignals = field(default_factory=ApprovalSignals)
    extra_read_models: list[ReadModel[Any]] = field(default_factory=list)  # the console's board

    def read_models(self) -> list[ReadModel[Any]]:
        """Every read model the app keeps current (their runners start with the app)."""
        return [self.runs, *self.extra_read_models]


def get_services(request: Request) -> Services:
    """The app's services."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_ledger(services: ServicesDep) -> Ledger:
    """The ledger."""
    return services.ledger


LedgerDep = Annotated[Ledger, Depends(get_ledger)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `tacho apikey create`: `Authorization: Bearer tacho_<id>_<secret>`",
)


def current_key(
    services: ServicesDep,
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The live API key of the request (401 when missing, unknown, revoked or expired)."""
    if creds is None:
        raise AuthError("missing API key: send `Authorization: Bearer tacho_<id>_<secret>`")
    key = services.keys.authenticate(creds.credentials)
    request.state.key_id = key.id
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def require(capability: Capability) -> Any:
    """A dependency that yields the current key if its role holds ``capability`` over the API
    (else 403; console-only roles never do)."""

    def dep(key: CurrentKey) -> ApiKey:
        check_api(key.role, capability)
        return key

    dep.__name__ = f"require_{capability.value}"
    return Depends(dep)


Publisher = Annotated[ApiKey, require(Capability.INGEST)]
HistoryReader = Annotated[ApiKey, require(Capability.READ_HISTORY)]
AuditLogReader = Annotated[ApiKey, require(Capability.READ_AUDIT_LOG)]
EvidenceReader = Annotated[ApiKey, require(Capability.EVIDENCE)]
LogReader = Annotated[ApiKey, require(Capability.READ_LOG)]
QuarantineReader = Annotated[ApiKey, require(Capability.QUARANTINE)]
Analyst = Annotated[ApiKey, require(Capability.ANALYTICS)]
Exporter = Annotated[ApiKey, require(Capability.EXPORT)]
Engineer = Annotated[ApiKey, require(Capability.REPLAY)]
Admin = Annotated[ApiKey, require(Capability.KEYS)]
ApprovalQueueReader = Annotated[ApiKey, require(Capability.APPROVAL_QUEUE)]
ApprovalReader = Annotated[ApiKey, require(Capability.APPROVAL_STATUS)]
Approver = Annotated[ApiKey, require(Capability.APPROVE)]
