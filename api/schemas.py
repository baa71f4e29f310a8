"""Request and response bodies of the HTTP API (documented in the OpenAPI spec)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from ingest.policies import REVISION


class Problem(BaseModel):
    """One field that breaks a rule."""

    path: str
    rule: str


class ErrorBody(BaseModel):
    """Every error response: the error's type, a message naming the problem, and field problems."""

    error: str = Field(description="error type, e.g. ContractError, AuthError, NotFoundError")
    message: str
    problems: list[Problem] = Field(default_factory=list)


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed request body"},
    401: {"model": ErrorBody, "description": "missing, unknown, revoked or expired API key"},
    403: {"model": ErrorBody, "description": "the key's role may not do this"},
    404: {"model": ErrorBody, "description": "not found (or in another workspace)"},
    413: {"model": ErrorBody, "description": "request body or batch too large"},
    415: {"model": ErrorBody, "description": "unsupported content type or encoding"},
    422: {"model": ErrorBody, "description": "invalid parameters"},
    503: {"model": ErrorBody, "description": "a dependency is unavailable"},
}


OriginName = Literal["production", "replay", "compensation", "audit", "all"]
"""The origins a request may select (``domain.origins.ORIGINS`` and ``all``)."""
OriginQuery = Annotated[
    OriginName | None,
    Query(description="runs of this origin (docs/analytics.md): `production` (agents' runs), the "
          "platform's own `replay`, `compensation` or `audit` runs, or `all`"),
]
ReplayIdQuery = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9._:-]{1,128}$",
          description="only the runs of this replay (replay runs: with `origin` other than "
          "`replay` or `all`, no runs)"),
]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses for an endpoint."""
    return {c: ERRORS[c] for c in codes}


class ItemResult(BaseModel):
    """What happened to one submitted event."""

    item: int = Field(description="position of the event in the request, from 0")
    status: str = Field(description="accepted | duplicate | held | quarantined | rejected")
    reason: str | None = None
    event_id: str | None = None
    run_id: str | None = None
    index: int | None = Field(None, description="ledger position of an accepted event")


class IngestReport(BaseModel):
    """Counts and per-item results of one ingest request."""

    accepted: int
    duplicates: int
    held: int
    quarantined: int
    rejected: int
    size: int = Field(description="ledger size after the request")
    results: list[ItemResult]


class Agent(BaseModel):
    """An agent identity."""

    id: str | None
    version: str | None


class RunOut(BaseModel):
    """A run summary."""

    workspace: str
    run_id: str
    workflow: str | None
    mode: str | None
    risk_tier: str | None
    agent: Agent
    started: str
    completed: str | None
    outcome: str | None
    events: int
    model_calls: int
    tool_calls: int
    denials: int
    tokens: int
    cost_usd: str | None = Field(
        description="exact USD cost of the run's model calls; null when a call had no known price")
    priced_cost_usd: str = Field(description="exact USD cost of the model calls with a known price")
    unpriced_calls: int = Field(description="model calls recorded with no known price (priced: false)")
    origin: OriginName = Field(description="where the run came from: `production`, or the "
                               "platform's own `replay`, `compensation` or `audit` run")
    replay_id: str | None = Field(description="the replay a replay run belongs to")
    decision_log: bool = Field(description="OPA's decision log of a path and day (`POST "
                               "/v1/opa/logs`): production decisions, not an agent's run; never "
                               "completes, and is not `running`")
    first_index: int
    last_index: int


class RunPage(BaseModel):
    """One page of runs; pass ``next_cursor`` as ``cursor`` for the next page."""

    runs: list[RunOut]
    next_cursor: str | None


class TimelineStep(BaseModel):
    """One step of a run timeline."""

    seq: int
    index: int
    time: str
    offset_ms: float | None = Field(description="milliseconds since the run started")
    type: str
    summary: str


class Timeline(BaseModel):
    """A run's steps in order, with its summary."""

    run: RunOut
    steps: list[TimelineStep]


class EntryOut(BaseModel):
    """A stored entry of a run: the event and its ledger position."""

    index: int
    seq: int
    leaf_hash: str
    prev: str | None
    received: str
    source: dict[str, Any]
    event: dict[str, Any]


class RunEvents(BaseModel):
    """Every stored entry of one run."""

    workspace: str
    run_id: str
    entries: list[EntryOut]


class AuditRecordOut(BaseModel):
    """One platform record as stored: its ledger position, leaf hash and the record itself."""

    index: int
    leaf_hash: str
    received: str
    record: dict[str, Any] = Field(
        description="`type` (audit.read, console.action, halt.set, halt.cleared), `workspace`, "
        "`time`, `actor` (`key_id`, `role`, `name`?), `data` (reads and actions: `action`, `method`, "
        "`path`, `query`?, `target`; halts: `scope`, `target`, `reason`, `via`, `set_index`), "
        "`record_id` (`record/<index>`)")


class AuditLogPage(BaseModel):
    """One page of the audit log; pass ``next_after`` as ``after`` for the next page."""

    records: list[AuditRecordOut]
    next_after: int | None


class CheckpointOut(BaseModel):
    """A signed checkpoint (C2SP signed-note text)."""

    size: int
    root: str
    note: str
    created: str


class InclusionProof(BaseModel):
    """RFC 9162 inclusion proof of one entry (hashes in hex)."""

    index: int
    size: int
    leaf_hash: str
    root: str
    proof: list[str]


class ConsistencyProof(BaseModel):
    """RFC 9162 consistency proof between two tree sizes (hashes in hex)."""

    first: int
    second: int
    first_root: str
    second_root: str
    proof: list[str]


class Verification(BaseModel):
    """The latest result of verifying the ledger from its stored bytes, and how fresh it is."""

    ok: bool
    entries: int = Field(description="entries verified: the ledger's first `entries` entries")
    checkpoints: int
    runs: int
    root: str | None
    position: int | None = Field(description="where verification failed (null when ok, or when "
                                 "the failure has no one position)")
    reason: str | None
    trusted_keys: list[str]
    approvals_checked_from: int | None = Field(
        None, description="from this ledger position on, every approval.decided was checked against "
        "a person's recorded decision (null: this ledger does not require them)")
    checkpoint_size: int | None = Field(None, description="size of the newest checkpoint verified")
    kind: Literal["full", "incremental"] = Field(
        description="full: the round verified the whole ledger (the first one of this server, or "
        "the first after a failure); incremental: only what was appended and signed since "
        "`verified_from`, on top of the last verified tree (RFC 9162 consistency proof)")
    verified_from: int = Field(description="entries verified before the round (0 for a full one)")
    checked_at: str = Field(description="when the round ended (RFC 3339)")
    age_s: float = Field(description="seconds since `checked_at`")
    took_ms: float = Field(description="how long the round took")
    ledger_size: int = Field(description="entries in the ledger now (`ledger_size - entries` are "
                             "not verified yet)")
    running: bool = Field(description="a round is verifying the entries appended since")


class QuarantinedOut(BaseModel):
    """A quarantined message with its reason."""

    id: int
    reason: str
    received: str
    source: dict[str, Any]
    workspace: str | None
    run_id: str | None
    event_id: str | None
    raw: str = Field(description="a preview: the first 1,024 raw bytes as UTF-8 text (invalid "
                     "bytes replaced); every kept byte from GET /v1/quarantine/{id}/raw")
    raw_size: int = Field(description="bytes of the message as received")
    raw_sha256: str = Field(description="SHA-256 (hex) of the message as received")
    raw_kept: int = Field(description="bytes the quarantine keeps: fewer than raw_size once the "
                          "workspace's quarantine was over its budget (then the first 1,024)")


class QuarantinePage(BaseModel):
    """One page of quarantined messages."""

    items: list[QuarantinedOut]
    next_cursor: int | None


class KeyOut(BaseModel):
    """An API key's public fields."""

    id: str
    workspace: str
    role: str
    created: str
    expires: str | None
    revoked: str | None
    label: str


class KeyCreate(BaseModel):
    """A new key request (the workspace is the admin key's own)."""

    role: Literal["publisher", "auditor", "analyst", "engineer", "admin", "approver"]
    expires: str | None = Field(
        None, description="lifetime: days, hours or minutes, e.g. 30d, 12h, 90m",
        pattern=r"^[1-9]\d{0,4}[dhm]$",
    )
    label: str = Field("", max_length=200)


class KeyCreated(BaseModel):
    """A new key and its secret, shown only this once."""

    key: KeyOut
    secret: str


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
    checks: dict[str, str] = Field(default_factory=dict)


RATE_LIMIT = Field(None, ge=0, le=1_000_000, description="a fraction: 0.05 = 5%")
PolicyThreshold = (Annotated[int, Field(ge=0, le=1_000_000_000)]
                   | Annotated[str, Field(pattern=r"^([0-9]{1,9}|[0-9]{0,3}(\.[0-9]{1,9})?%|[0-9]?\.[0-9]{1,9})$")])
"""A policy gate threshold: a count of actions, or a rate (``5%`` or ``0.05``)."""


class ReplayStart(BaseModel):
    """A replay request: which recorded runs, which agent code, which candidate, which gate."""

    model_config = {"extra": "forbid"}

    mode: Literal["full", "steps", "policy"] = Field(
        "full", description="`full`: re-run the agent code over the recorded runs (fidelity, or "
        "what-if with `model`/`prompts`); `steps`: send each recorded model request again to "
        "`model` (no agent code; OTLP runs included); `policy`: ask a stored policy revision "
        "(`policy_revision`) about every recorded tool call and change (no agent code, no model)",
    )
    policy_revision: str | None = Field(
        None, pattern=f"^{REVISION}$",
        description="policy replays: a revision of the key's workspace's policy (`GET "
        "/v1/policy/revisions`), e.g. `3-5f2a9c1e0b7d`, usually published but not yet in force. "
        "The server serves its stored files to its own OPA; a request never names a file or a URL",
    )
    agent: str | None = Field(
        None, description="agent code as module:function (full replays); must be on the server's "
        "allow-list (setting `replay_agents`)", min_length=3, max_length=200,
    )
    workflow: str | None = Field(
        None, max_length=512, description="replay finished runs of this workflow "
        "(default: the agent module's WORKFLOW when `runs` is not given)",
    )
    runs: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]] = Field(
        default_factory=list, max_length=10_000, description="replay exactly these run ids"
    )
    since: str | None = Field(
        None, pattern=r"^\d{4}-\d{2}-\d{2}([Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2}))?$",
        description="only runs started at or after this RFC 3339 date or time",
    )
    limit: int | None = Field(None, ge=1, le=1_000_000, description="at most N runs, oldest first")
    model: str | None = Field(
        None, min_length=1, max_length=200,
        description="candidate model (what-if replay): a simulated model or one the server's models "
        "file names (setting `models`); none: fidelity replay. A request names a model, never a "
        "URL or a key: the server would otherwise call any address a client gives it, inside its "
        "own network (server-side request forgery), and could be made to send its keys there",
    )
    allow_unpriced: bool = Field(
        False, description="call a model with no known price (its calls are recorded unpriced); "
        "otherwise such a replay is refused (422) before anything is called",
    )
    no_cache: bool = Field(
        False, description="call real models again instead of answering from the server's response "
        "cache, and store their new answers",
    )
    prompts: dict[Annotated[str, Field(min_length=1, max_length=200)],
                  Annotated[str, Field(max_length=200_000)]] = Field(
        default_factory=dict, max_length=100,
        description="candidate prompts by name (each must be one the agent registers)",
    )
    max_outcome_change: Decimal | None = RATE_LIMIT
    max_cost_increase: Decimal | None = RATE_LIMIT
    max_violation_increase: Decimal | None = RATE_LIMIT
    max_response_change: Decimal | None = Field(
        None, ge=0, le=1_000_000, description="step replays: max response change rate (0.05 = 5%)")
    max_tool_call_change: Decimal | None = Field(
        None, ge=0, le=1_000_000, description="step replays: max tool-call change rate (0.05 = 5%)")
    max_new_denials: PolicyThreshold | None = Field(
        None, description="policy replays: max actions the revision would newly deny, a count "
        "(`0`, `3`) or a rate of the re-evaluated actions (`\"5%\"`, `\"0.05\"`), as "
        "`tacho replay --max-new-denials` takes it")
    max_new_approvals: PolicyThreshold | None = Field(
        None, description="policy replays: max actions that would newly need a person's approval, "
        "a count or a rate, as `tacho replay --max-new-approvals` takes it")


class ReplayProgress(BaseModel):
    """How far a replay has got."""

    done: int
    total: int | None = Field(description="runs to replay (unknown until they are loaded)")


class ReplayJobOut(BaseModel):
    """A replay's state; ``report`` is set once it finished (tachograph replay report)."""

    replay_id: str
    status: Literal["queued", "running", "finished", "failed"]
    created: str
    finished: str | None
    agent: str | None
    mode: str | None
    candidate: str | None
    progress: ReplayProgress
    passed: bool | None = Field(description="whether the release gate passed (when finished)")
    error: str | None
    report: dict[str, Any] | None = None


class ReplayList(BaseModel):
    """Replays of the key's workspace, oldest first (without their reports)."""

    replays: list[ReplayJobOut]


class ApprovalOut(BaseModel):
    """One approval request and, once made, the person's decision on it."""

    approval_id: str
    run_id: str
    status: Literal["pending", "approved", "rejected", "expired"] = Field(
        description="expired: its timeout_s passed, or its run ended, before anyone decided")
    decided_by: str | None = Field(description="the person who decided (the `by` the agent must record)")
    decided_at: str | None
    reason: str | None
    summary: str
    risk: str
    change_id: str | None
    requested_at: str = Field(description="the time of the approval.requested event")
    expires_at: str | None = Field(description="when it expires undecided (timeout_s after it was received)")
    ledger_index: int = Field(description="ledger position of the approval.requested event")
    decision_index: int | None = Field(description="ledger position of the person's approval.decision record")


class ApprovalPage(BaseModel):
    """A page of a workspace's approvals."""

    approvals: list[ApprovalOut]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")


class DecisionIn(BaseModel):
    """A person's decision on an approval."""

    model_config = {"extra": "forbid"}

    decision: Literal["approved", "rejected"]
    reason: Annotated[str, Field(max_length=2000)] | None = None


class OpaLogReport(BaseModel):
    """What became of one OPA decision-log upload."""

    decisions: int = Field(description="decision events in the upload")
    recorded: int = Field(description="decisions appended to the ledger now")
    duplicates: int = Field(description="decisions already in the ledger (OPA retried)")
    rejected: list[dict[str, Any]] = Field(
        description="decisions not recorded: {item, decision_id, reason}")
    runs: list[str] = Field(description="the runs (one per decision path and UTC day) written")
    size: int = Field(description="ledger size after the request")
