"""Approvals across processes: the index of approval requests and the rules tying a run's
``approval.decided`` to a person's decision (see docs/decisions/0004-approvals.md).

A person decides through the platform, which writes an ``approval.decision`` platform record
(``Ledger.append_records``); the agent then records its own ``approval.decided`` in its run, and
the ledger accepts it only when it repeats that decision. The store keeps one ``ApprovalRow`` per
(workspace, approval_id), written in the same transaction as the entries it describes: what the
API answers and what the append path checks, without reading the ledger back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from domain.errors import NotFoundError, TachographError
from domain.records import Record, RecordError
from tachograph.contract.canonical import loads
from tachograph.contract.rules import RunState

if TYPE_CHECKING:
    from domain.ledger import Ledger
    from domain.ports import LedgerStore, LedgerTx

APPROVAL_DECISION = "approval.decision"
"""The record type of a person's decision."""
DECISIONS_FROM = "approval_decisions_from"
"""Store meta key: the ledger size from which every ``approval.decided`` must repeat a person's
decision (set once, when the ledger is first opened with ``approval_decisions="person"``)."""
APPROVALS_INDEXED = "approvals_indexed"
"""Store meta key: the ledger size at which the approvals index was built from older entries."""
DECISIONS = ("approved", "rejected")
STATUSES = ("pending", "approved", "rejected", "expired")
MAX_REASON = 2000


class ApprovalConflict(TachographError):
    """An approval cannot be decided: it was decided already, expired, or its run ended (HTTP 409)."""


@dataclass(frozen=True)
class ApprovalRow:
    """One approval request of a workspace and, once made, the person's decision on it."""

    workspace: str
    approval_id: str
    run_id: str
    requested_index: int
    requested_at: str
    summary: str = ""
    risk: str = ""
    change_id: str | None = None
    expires_at: float | None = None  # unix time: received + timeout_s
    closed: bool = False  # the run completed while the approval was undecided
    decision: str | None = None
    decided_by: str | None = None
    decided_at: str | None = None
    reason: str | None = None
    decision_index: int | None = None

    def status(self, now: float) -> str:
        """pending, approved, rejected or expired (timed out, or its run ended, undecided)."""
        if self.decision is not None:
            return self.decision
        if self.closed or (self.expires_at is not None and now >= self.expires_at):
            return "expired"
        return "pending"

    def decided(self, decision: str, by: str, at: str, reason: str | None, index: int) -> ApprovalRow:
        """This row with a decision."""
        return replace(self, decision=decision, decided_by=by, decided_at=at, reason=reason,
                       decision_index=index)


APPROVAL_COLUMNS = (
    "workspace", "approval_id", "run_id", "requested_index", "requested_at", "summary", "risk",
    "change_id", "expires_at", "closed", "decision", "decided_by", "decided_at", "reason",
    "decision_index",
)
"""The columns of a SQL store's ``approvals`` table, in ``ApprovalRow`` field order."""


def row_values(row: ApprovalRow) -> tuple[Any, ...]:
    """An approval row as SQL parameters (``APPROVAL_COLUMNS`` order)."""
    return tuple(getattr(row, name) for name in APPROVAL_COLUMNS)


def row_of(values: Any) -> ApprovalRow:
    """An approval row from SQL values (``APPROVAL_COLUMNS`` order)."""
    v = list(values)
    v[9] = bool(v[9])
    return ApprovalRow(*v)


def required_from(meta_value: str | None) -> int | None:
    """The ledger size from which decisions are required, from the store's meta (None: never)."""
    return None if meta_value is None else int(meta_value)


def requested_row(event: dict[str, Any], data: dict[str, Any], index: int, received: float) -> ApprovalRow:
    """The row an accepted ``approval.requested`` (its full ``data``) starts."""
    timeout = data.get("timeout_s")
    return ApprovalRow(
        workspace=event["workspace"], approval_id=data["approval_id"], run_id=event["run_id"],
        requested_index=index, requested_at=event["time"], summary=data["summary"], risk=data["risk"],
        change_id=data.get("change_id"),
        expires_at=None if timeout is None else received + float(timeout),
    )


def request_refusal(existing: ApprovalRow | None, workspace: str, approval_id: str) -> str | None:
    """Why an ``approval.requested`` may not reuse its approval id, or None."""
    if existing is None:
        return None
    where = (f"ledger index {existing.requested_index}" if existing.requested_index >= 0
             else "earlier in the same batch")
    return (f"approval_id {approval_id!r} is already used in workspace {workspace!r} by run "
            f"{existing.run_id!r} ({where}); approval ids are unique within a workspace")


def decided_refusal(row: ApprovalRow | None, run_id: str, data: dict[str, Any]) -> str | None:
    """Why a run's ``approval.decided`` does not repeat a person's recorded decision, or None."""
    aid = data["approval_id"]
    if row is None or row.run_id != run_id:
        return f"approval.decided names approval {aid!r}, which run {run_id!r} did not request"
    if row.decision is None:
        return (f"approval.decided names approval {aid!r}, which no person decided through the "
                "platform (wait for GET /v1/approvals/{approval_id} to answer approved or rejected)")
    if data["decision"] != row.decision:
        return (f"approval {aid!r} was {row.decision} by {row.decided_by!r}, "
                f"not {data['decision']}")
    if data["by"] != row.decided_by:
        return (f"approval.decided of {aid!r} says by {data['by']!r}, but {row.decided_by!r} "
                "decided it")
    return None


def replayed_refusal(row: ApprovalRow | None, run_id: str, replay_of: str, data: dict[str, Any],
                     required_from: int) -> str | None:
    """Why a replay's ``approval.decided`` does not repeat a person's decision in the run it replays.

    A replay (``run.started.data.replay_of`` = R) never asks a person: its ``approval.decided``
    names, in ``replayed_from``, the approval A of run R whose recorded decision it repeats (``row``
    is A's row), with the same ``decision`` and ``by``. Only a decision recorded since this ledger
    required persons' decisions (``required_from``) counts: before that an agent's own could have
    decided A.
    """
    source = data.get("replayed_from")
    if source is None:
        return (f"approval.decided in run {run_id!r}, a replay of {replay_of!r}, names no replayed_from: "
                "a replay never asks a person, it repeats a decision recorded in the run it replays")
    if row is None or row.run_id != replay_of:
        return (f"approval.decided replays approval {source!r}, which run {replay_of!r} (the run that "
                f"run {run_id!r} replays) did not request")
    if row.decision is None or row.decision_index is None or row.decision_index < required_from:
        return (f"approval.decided replays approval {source!r} of run {replay_of!r}, which no person "
                "decided through the platform")
    if data["decision"] != row.decision or data["by"] != row.decided_by:
        return (f"approval.decided replays approval {source!r} as {data['decision']} by {data['by']!r}, "
                f"but it was {row.decision} by {row.decided_by!r}")
    return None


def check_decision(row: ApprovalRow | None, workspace: str, approval_id: str, now: float) -> ApprovalRow:
    """The row a person may decide now (NotFoundError, or ApprovalConflict saying why not)."""
    if row is None:
        raise NotFoundError(f"no approval {approval_id!r} in workspace {workspace!r}")
    status = row.status(now)
    if row.decision is not None:
        raise ApprovalConflict(f"approval {approval_id!r} was already decided: {row.decision} by "
                               f"{row.decided_by} at {row.decided_at}")
    if status == "expired":
        why = "its run ended" if row.closed else "its timeout passed"
        raise ApprovalConflict(f"approval {approval_id!r} expired undecided ({why}); it can no longer be decided")
    return row


def decision_data(row: ApprovalRow, decision: str, by: str, reason: str | None) -> dict[str, Any]:
    """The ``data`` of an ``approval.decision`` record (the one place it is built)."""
    if decision not in DECISIONS:
        raise ApprovalConflict(f"decision must be approved or rejected, not {decision!r}")
    data: dict[str, Any] = {"approval_id": row.approval_id, "run_id": row.run_id, "decision": decision,
                            "by": by}
    if reason:
        data["reason"] = reason[:MAX_REASON]
    return data


def record_decision(ledger: Ledger, workspace: str, approval_id: str, decision: str, by: str,
                    actor: dict[str, str], reason: str | None, at: str, now: float,
                    run_id: str | None = None) -> ApprovalRow:
    """Record a person's decision as an ``approval.decision`` platform record (the one way a
    decision enters the ledger: the API, the console and in-process tools all call this).

    ``run_id``: the run the person saw the approval in, which it must belong to. Raises
    NotFoundError, or ApprovalConflict when it was decided already, expired or its run ended
    (checked again in the append transaction, so two deciders cannot both win).
    """
    row = ledger.store.approval(workspace, approval_id)
    if row is not None and run_id is not None and row.run_id != run_id:
        raise NotFoundError(f"no approval {approval_id!r} in run {run_id!r}")
    row = check_decision(row, workspace, approval_id, now)
    data = decision_data(row, decision, by, reason)
    ledger.append_records([Record(APPROVAL_DECISION, workspace, at, actor, data)])
    decided = ledger.store.approval(workspace, approval_id)
    assert decided is not None
    return decided


_UNREAD = "(unread)"


class ApprovalBook:
    """The approvals index as one append transaction reads and changes it (rows read when first
    needed, written at flush): only approval events, runs ending and decision records use it."""

    def __init__(self, tx: LedgerTx, now: float) -> None:
        self.tx = tx
        self.now = now
        self.rows: dict[tuple[str, str], ApprovalRow | None] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.required_from: str | None = _UNREAD

    def get(self, key: tuple[str, str]) -> ApprovalRow | None:
        """The row of (workspace, approval_id), as this transaction has it (locked first)."""
        if key not in self.rows:
            self.preload([key])
        return self.rows[key]

    def preload(self, keys: Iterable[tuple[str, str]]) -> None:
        """Lock and read the rows of these keys not read yet, in one store call each (a batch's
        approvals): no other writer changes them before this transaction ends."""
        wanted = sorted({k for k in keys if k not in self.rows})
        if wanted:
            self.tx.lock_approvals(wanted)
            found = self.tx.approvals(wanted)
            self.rows.update((k, found.get(k)) for k in wanted)

    def put(self, row: ApprovalRow) -> None:
        key = (row.workspace, row.approval_id)
        self.rows[key] = row
        self.dirty.add(key)

    def decisions_required(self) -> bool:
        """Whether this ledger requires a person's decision behind every approval.decided."""
        if self.required_from == _UNREAD:
            self.required_from = self.tx.meta(DECISIONS_FROM)
        return self.required_from is not None

    def refusal(self, event: dict[str, Any], data: dict[str, Any], replay_of: str | None = None) -> str | None:
        """Why an approval event (its whole ``data``) of a run (a replay of ``replay_of``, if
        set) breaks the approval rules, or None."""
        if not self.decisions_required():
            return None
        ws, aid, run = event["workspace"], data["approval_id"], event["run_id"]
        if event["type"] == "approval.requested":
            return request_refusal(self.get((ws, aid)), ws, aid)
        if replay_of is not None:
            source = data.get("replayed_from")
            row = None if source is None else self.get((ws, source))
            start = required_from(self.required_from)
            assert start is not None  # decisions_required() read it
            return replayed_refusal(row, run, replay_of, data, start)
        if data.get("replayed_from") is not None:
            return (f"approval.decided names replayed_from {data['replayed_from']!r}, but run {run!r} is "
                    "not a replay (its run.started has no replay_of)")
        return decided_refusal(self.get((ws, aid)), run, data)

    def accepted(self, event: dict[str, Any], data: dict[str, Any] | None, index: int, state: RunState) -> None:
        """Note an accepted approval event (``data``), or a run's end (None: its undecided approvals expire).

        A replay's requests get no row: no person is asked, so they are neither in the queue nor
        decidable (their ids are still checked against the index, see ``refusal``).
        """
        ws, run = event["workspace"], event["run_id"]
        if data is None:
            for aid, status in state.approvals.items():
                row = self.get((ws, aid)) if status == "requested" else None
                if row is not None and row.run_id == run and row.decision is None and not row.closed:
                    self.put(replace(row, closed=True))
            return
        row = self.get((ws, data["approval_id"]))
        if event["type"] == "approval.requested":
            if row is None and state.replay_of is None:  # a reused id, where allowed, keeps its first request
                self.put(requested_row(event, data, index, self.now))
        elif row is not None and row.run_id == run and row.decision is None:
            # a ledger that does not require a person's decision: the agent's own is the decision
            self.put(row.decided(data["decision"], data["by"], event["time"], data.get("reason"), index))

    def decision(self, rec: Record, index: int) -> None:
        """Check a person's decision (a record at ``index``) against its approval and note it."""
        d = rec.data
        aid, decision, by = d.get("approval_id"), d.get("decision"), d.get("by")
        if not isinstance(aid, str) or decision not in DECISIONS or not isinstance(by, str) or not by:
            raise RecordError("an approval.decision record needs approval_id, decision (approved or "
                              "rejected) and by")
        row = check_decision(self.get((rec.workspace, aid)), rec.workspace, aid, self.now)
        if d.get("run_id") != row.run_id:
            raise ApprovalConflict(f"approval {aid!r} belongs to run {row.run_id!r}, not {d.get('run_id')!r}")
        reason = d.get("reason")
        self.put(row.decided(str(decision), by, rec.time, reason if isinstance(reason, str) else None, index))

    def position(self, base: int) -> None:
        """Give the changed rows their ledger indexes: until the batch was sequenced from
        ``base``, an entry's stand-in index was ``-1 - p`` for the batch's ``p``-th entry."""
        def real(index: int) -> int:
            return index if index >= 0 else base - 1 - index

        for key in self.dirty:
            row = self.rows[key]
            if row is not None and (row.requested_index < 0 or (row.decision_index or 0) < 0):
                decided = row.decision_index
                self.rows[key] = replace(row, requested_index=real(row.requested_index),
                                         decision_index=None if decided is None else real(decided))

    def flush(self) -> None:
        """Write the changed rows."""
        if self.dirty:
            self.tx.put_approvals([r for k in sorted(self.dirty) if (r := self.rows[k]) is not None])


def index_approvals(store: LedgerStore, tx: LedgerTx) -> None:
    """Build the approvals index from the approval events of a ledger older than it (once)."""
    size = tx.head().size
    rows: dict[tuple[str, str], ApprovalRow] = {}
    for index, raw in store.entries_containing(b'"type":"approval.', 0, size):
        entry = loads(raw)
        ev = entry.get("event") if entry.get("kind") == "event" else None
        if not isinstance(ev, dict) or ev.get("type") not in ("approval.requested", "approval.decided"):
            continue
        d = ev["data"]
        key = (ev["workspace"], d["approval_id"])
        row = rows.get(key)
        if ev["type"] == "approval.requested" and row is None:
            received = datetime.fromisoformat(entry["received"].replace("Z", "+00:00")).timestamp()
            rows[key] = requested_row(ev, d, index, received)
        elif ev["type"] == "approval.decided" and row is not None and row.run_id == ev["run_id"] \
                and row.decision is None:
            rows[key] = row.decided(d["decision"], d["by"], ev["time"], d.get("reason"), index)
    runs = sorted({(r.workspace, r.run_id) for r in rows.values()})
    ended = {k for k, raw in tx.load_runs(runs).items() if RunState.from_bytes(raw).completed}
    if rows:
        tx.put_approvals([replace(r, closed=(r.workspace, r.run_id) in ended and r.decision is None)
                          for r in rows.values()])
    tx.set_meta(APPROVALS_INDEXED, str(size))
