"""The write path: validate → canonicalise → run rules → chain → leaf hash → append → checkpoint.

Every entry point (Kafka, HTTP, OTLP, JSONL import, replay, console) calls :meth:`Ledger.append`
with raw bytes and where they came from; one store transaction per batch holds the entries,
their Merkle nodes, run states, quarantined messages, consumer offsets and any checkpoint.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from hashlib import sha256
from typing import Any, TypeVar

from domain import merkle
from domain.approvals import (
    APPROVAL_DECISION,
    APPROVALS_INDEXED,
    DECISIONS_FROM,
    ApprovalBook,
    index_approvals,
)
from domain.checkpoint import Checkpoint, sign_checkpoint
from domain.errors import (
    ContractError,
    NotFoundError,
    RunRuleError,
    StoreIntegrityError,
    StoreRetryError,
    TachographError,
)
from domain.note import NoteSigner
from domain.ports import (
    CheckpointRow,
    EntryRow,
    Head,
    HeldRow,
    Incoming,
    LedgerStore,
    LedgerTx,
    QuarantineRow,
    Source,
)
from domain.records import RECORD_KIND, Record, record_body, record_id
from tachograph.contract.canonical import MAX_EVENT_BYTES, dumps, loads, parse_event
from tachograph.contract.rules import RunState

Clock = Callable[[], float]
_T = TypeVar("_T")
ROTATION_PREFIX = "tachograph key rotation"


def iso(ts: float) -> str:
    """RFC 3339 UTC text of a unix time (microsecond precision)."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class LedgerConfig:
    """Tunables of the write path."""

    origin: str
    checkpoint_every: int = 10_000
    checkpoint_interval_s: float = 5.0
    max_held: int = 10_000
    held_timeout_s: float = 60.0
    max_held_per_workspace: int = 1_000
    quarantine_bytes_per_workspace: int = 256 * 2**20
    quarantine_bytes_unattributed: int = 64 * 2**20
    approval_decisions: str = "person"
    """``person`` (the default): from now on every ``approval.decided`` must repeat a person's
    decision recorded by the platform, and approval ids are unique within a workspace (see
    ``domain/approvals.py``); ``agent``: agents' own decisions are accepted, until the ledger is
    once opened with ``person``."""


QUARANTINE_PREVIEW_BYTES = 1024
"""Raw bytes kept of a quarantined item once its bucket is over its budget (and shown in lists)."""
_WORKSPACE = re.compile(r"[a-z0-9-]{1,64}")
_APPROVAL_STEPS = frozenset({"approval.requested", "approval.decided", "run.completed"})


@dataclass(slots=True)
class Outcome:
    """What happened to one incoming item."""

    status: str  # accepted | duplicate | quarantined | held
    reason: str | None = None
    index: int | None = None
    event_id: str | None = None
    run_id: str | None = None


@dataclass
class AppendReport:
    """Counts and per-item outcomes of one append call."""

    results: list[Outcome] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    held: int = 0
    size: int = 0
    checkpoint: CheckpointRow | None = None

    def to_json(self) -> dict[str, Any]:
        """The report's counts as JSON."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "held": self.held,
            "size": self.size,
        }


RULE_KEYS = ("approval_id", "change_id", "decision", "action", "target", "reversible", "replay_of")
ENVELOPE_KEYS = ("workspace", "run_id", "seq", "event_id", "type", "time")


@dataclass
class Parsed:
    """One item after validation: the facts the write path needs, or why it failed."""

    item: Incoming
    event: dict[str, Any] | None
    canonical: bytes | None
    error: str | None
    ehash: bytes | None = None  # SHA-256 of canonical, when the validator computed it


def slim(event: dict[str, Any]) -> dict[str, Any]:
    """The envelope and the data fields the run rules read (cheap to pass between processes)."""
    out = {k: event[k] for k in ENVELOPE_KEYS}
    out["data"] = _rule_data(event["data"])
    return out


def _rule_data(data: dict[str, Any]) -> dict[str, Any]:
    """The data fields the run rules read."""
    return {k: data[k] for k in RULE_KEYS if k in data}


ParseResult = tuple[dict[str, Any] | None, bytes | None, str | None]


def validate_raw(raws: Sequence[bytes]) -> list[ParseResult]:
    """Validate raw events (pure, picklable results): (slim facts, canonical bytes, error)."""
    out: list[ParseResult] = []
    for raw in raws:
        try:
            event, canonical = parse_event(raw)
        except ContractError as e:
            out.append((None, None, f"contract: {e}"))
        else:
            out.append((slim(event), canonical, None))
    return out


Packed = tuple[tuple[Any, ...] | None, bytes | None, str | None, bytes | None]
_PACKED_KEYS = (*ENVELOPE_KEYS, "data")


def validate_packed(raws: Sequence[bytes]) -> list[Packed]:
    """``validate_raw`` with the facts as tuples: about 3x cheaper to unpickle than dicts.

    For validating in another process; ``unpack`` turns each result back into a ParseResult.
    """
    out: list[Packed] = []
    for raw in raws:
        try:
            event, canonical = parse_event(raw)
        except ContractError as e:
            out.append((None, None, f"contract: {e}", None))
            continue
        facts = (*_envelope(event), _rule_data(event["data"]))  # slim(), straight into a tuple
        out.append((facts, canonical, None, _event_hash(canonical)))
    return out


_envelope = operator.itemgetter(*ENVELOPE_KEYS)


def unpack(item: Incoming, packed: Packed) -> Parsed:
    """A packed validation result of ``item`` as Parsed."""
    facts, canonical, error, ehash = packed
    event = None if facts is None else dict(zip(_PACKED_KEYS, facts, strict=True))
    return Parsed(item, event, canonical, error, ehash)


def _event_hash(canonical: bytes) -> bytes:
    return hashlib.sha256(canonical).digest()


def parse_items(items: Sequence[Incoming]) -> list[Parsed]:
    """Validate items against the contract (pure; done outside the store transaction)."""
    return [Parsed(item, *result) for item, result in zip(items, validate_raw([i.raw for i in items]), strict=True)]


def _claimed_workspace(raw: bytes) -> str | None:
    """The workspace a rejected JSON object names, if it is a workspace name (else None)."""
    if len(raw) > MAX_EVENT_BYTES or not raw.lstrip().startswith(b"{"):
        return None
    try:
        value = loads(raw)
    except ValueError:
        return None
    ws = value.get("workspace") if isinstance(value, dict) else None
    return ws if isinstance(ws, str) and _WORKSPACE.fullmatch(ws) else None


def _provisional(position: int) -> int:
    """The stand-in index of the batch's ``position``-th entry until it is sequenced (negative)."""
    return -1 - position


@dataclass(slots=True)
class _System:
    """A system entry (record, key rotation) waiting for its ledger position."""

    kind: str
    body: Callable[[int], Mapping[str, Any]]  # the entry's members, given its index
    columns: Callable[[int], dict[str, Any]] | None = None  # its index columns, given its index
    row: EntryRow | None = None  # once positioned


# an event accepted by the batch, waiting for its ledger position:
# (its outcome, its source, the event's facts, its canonical bytes, its run's key)
_Accepted = tuple[Outcome, Source, dict[str, Any], bytes, tuple[str, str]]


class _Batch:
    """Mutable working set of one append transaction.

    In three steps: ``load`` and ``process`` decide each item's outcome under the locks of the
    runs it touches; ``position`` has the store sequence the accepted entries and builds their
    bytes and leaf hashes (outside any ledger-wide lock); ``flush`` writes everything and then
    integrates the leaves into the Merkle tree, the only serial step.
    """

    def __init__(self, ledger: Ledger, tx: LedgerTx, now: float) -> None:
        self.ledger = ledger
        self.tx = tx
        self.now = now
        self.received = iso(now)
        self.pending: list[_Accepted | _System] = []  # entries in the order they take positions
        self.chain: dict[tuple[str, str], str | None] = {}  # each run's last hash before the batch
        self.entries: list[EntryRow] = []
        self.leaves: list[bytes] = []  # hashed into the tree in one pass at flush
        self.base: int | None = None  # the first position sequenced for the batch
        self.quarantine: list[QuarantineRow] = []
        self.states: dict[tuple[str, str], RunState] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.known: dict[tuple[str, str], tuple[str, int, bytes]] = {}
        self.held: dict[tuple[str, str], dict[int, HeldRow]] = {}
        self.held_new: list[HeldRow] = []
        self.held_drop: list[tuple[str, str, int]] = []
        self.held_total = 0
        self.held_stored = 0
        self.held_by_ws: dict[str, int] = {}  # per-workspace counts, read when one first holds
        self.kept_by_ws: dict[str | None, int] = {}  # quarantine bytes kept, read when first needed
        self.exceptions_locked = False
        self.report = AppendReport()
        self.approvals = ApprovalBook(tx, now)
        origin = dumps(ledger.config.origin)
        self.middle = b',"kind":"event","log":' + origin + b',"prev":'
        self.received_json = b',"received":' + dumps(self.received) + b',"source":'

    @staticmethod
    def source_json(source: Source) -> bytes:
        """Canonical JSON of a source; the two common shapes are assembled directly."""
        if source.kind == "kafka" and source.name is None and source.line is None and (
            source.offset is not None and source.partition is not None and source.topic is not None
        ):
            return b'{"kind":"kafka","offset":%d,"partition":%d,"topic":%s}' % (
                source.offset, source.partition, dumps(source.topic)
            )
        if source.kind == "file" and source.topic is None and source.offset is None and (
            source.partition is None and source.line is not None and source.name is not None
        ):
            return b'{"kind":"file","line":%d,"name":%s}' % (source.line, dumps(source.name))
        return dumps(source.to_json())

    def load(self, parsed: Sequence[Parsed], optimistic: bool) -> None:
        """Lock the runs this batch touches; load their states, held events, the stored event
        ids and the approvals it needs.

        Optimistic: only events that are not simply their run's next seq (after the stored
        state and the events before them in this batch) are looked up by event_id. Such an
        event's seq is beyond anything stored for its run, so it can only clash with a stored
        event of another run or seq; reusing that event_id breaks the store's unique index, and
        the caller redoes the batch with every id looked up.
        """
        run_keys = sorted({(p.event["workspace"], p.event["run_id"]) for p in parsed if p.event})
        for key, raw in self.tx.lock_runs(run_keys).items():
            self.states[key] = RunState.from_bytes(raw)
        self.held_total = self.held_stored = self.tx.count_held()
        if self.held_total:
            for row in self.tx.load_held(run_keys):
                self.held.setdefault((row.workspace, row.run_id), {})[row.seq] = row
        ids: set[tuple[str, str]] = set()
        next_seq: dict[tuple[str, str], int] = {}  # each run's next seq as the batch goes on
        approvals: list[tuple[str, str]] = []  # the approvals index rows the batch will read
        for p in parsed:
            ev = p.event
            if ev is None:
                continue
            key = (ev["workspace"], ev["run_id"])
            if ev["type"] in _APPROVAL_STEPS:
                approvals += self.approval_keys(key, ev)
            expected = next_seq.get(key)
            if expected is None:
                state = self.states.get(key)
                expected = state.next_seq if state is not None else 0
            if not optimistic or key in self.held or ev["seq"] != expected:
                ids.add((ev["workspace"], ev["event_id"]))
            else:
                next_seq[key] = expected + 1
        self.known = self.tx.event_hashes(sorted(ids))
        self.approvals.preload(approvals)

    def approval_keys(self, key: tuple[str, str], ev: dict[str, Any]) -> list[tuple[str, str]]:
        """The approvals index rows an approval event, or a run's end, of run ``key`` reads."""
        if ev["type"] != "run.completed":
            return [(key[0], ev["data"]["approval_id"])]
        state = self.states.get(key)
        if state is None:
            return []
        return [(key[0], aid) for aid, status in state.approvals.items() if status == "requested"]

    def lock_exceptions(self) -> None:
        """Take the ledger-wide lock of the hold buffer and quarantine budgets (once), then count
        the held events afresh: other writers may have held some since ``load``."""
        if self.exceptions_locked:
            return
        self.exceptions_locked = True
        self.tx.lock_exceptions()
        self.held_stored = self.tx.count_held()
        self.held_total = self.held_stored - len(self.held_drop) + len(self.held_new)

    def quarantine_item(
        self, item: Incoming, reason: str, event: dict[str, Any] | None = None
    ) -> Outcome:
        ws = run = eid = None
        if event is not None:
            ws, run, eid = event.get("workspace"), event.get("run_id"), event.get("event_id")
        else:
            ws = item.workspace or _claimed_workspace(item.raw)
        raw = item.raw
        self.quarantine.append(
            QuarantineRow(self.keep(ws, raw), reason, item.source, self.received, ws, run, eid,
                          None, len(raw), hashlib.sha256(raw).digest())
        )
        self.report.quarantined += 1
        return Outcome("quarantined", reason, None, eid, run)

    def keep(self, workspace: str | None, raw: bytes) -> bytes:
        """The raw bytes the quarantine keeps: all of them while the bucket is within its budget,
        then a preview (the item's size and SHA-256 are kept either way)."""
        config = self.ledger.config
        budget = (config.quarantine_bytes_unattributed if workspace is None
                  else config.quarantine_bytes_per_workspace)
        used = self.kept_by_ws.get(workspace)
        if used is None:
            self.lock_exceptions()
            used = self.tx.quarantine_kept_bytes(workspace)
        kept = raw if used + len(raw) <= budget else raw[:QUARANTINE_PREVIEW_BYTES]
        self.kept_by_ws[workspace] = used + len(kept)
        return kept

    def process(self, p: Parsed) -> Outcome:
        if p.event is None or p.canonical is None:
            return self.quarantine_item(p.item, p.error or "contract: invalid")
        ev = p.event
        ws, run, seq, eid = ev["workspace"], ev["run_id"], ev["seq"], ev["event_id"]
        key = (ws, run)
        ehash = p.ehash or _event_hash(p.canonical)
        known = self.known.get((ws, eid))
        if known is not None:
            if known == (run, seq, ehash):
                self.report.duplicates += 1
                return Outcome("duplicate", "identical event already stored", None, eid, run)
            return self.quarantine_item(
                p.item, f"conflict: event_id {eid!r} is already stored with different content", ev
            )
        state = self.states.get(key)
        if state is None:
            state = RunState(ws, run)
            self.states[key] = state
        if seq < state.next_seq:
            return self.quarantine_item(
                p.item, f"conflict: seq {seq} of run {run!r} is already stored with different content", ev
            )
        if seq > state.next_seq:
            return self.hold(p, state)
        outcome = self.accept(p.item, ev, p.canonical, ehash, state)
        if outcome.status == "accepted":
            self.release(key, state)
        return outcome

    def hold(self, p: Parsed, state: RunState) -> Outcome:
        ev = p.event
        assert ev is not None
        key = (state.workspace, state.run_id)
        waiting = self.held.setdefault(key, {})
        existing = waiting.get(ev["seq"])
        if existing is not None:
            if existing.raw == p.item.raw:
                self.report.duplicates += 1
                return Outcome("duplicate", "identical event already held", None, ev["event_id"], ev["run_id"])
            return self.quarantine_item(
                p.item, f"conflict: seq {ev['seq']} is already held with different content", ev
            )
        self.lock_exceptions()
        config = self.ledger.config
        if self.held_total >= config.max_held:
            return self.quarantine_item(
                p.item,
                f"gap: run {state.run_id!r} expects seq {state.next_seq}, got {ev['seq']}, "
                f"and the hold buffer is full ({config.max_held})",
                ev,
            )
        in_ws = self.held_in(state.workspace)
        if in_ws >= config.max_held_per_workspace:
            return self.quarantine_item(
                p.item,
                f"gap: run {state.run_id!r} expects seq {state.next_seq}, got {ev['seq']}, and "
                f"workspace {state.workspace!r} already holds {in_ws} events, its share of the hold "
                f"buffer ({config.max_held_per_workspace})",
                ev,
            )
        row = HeldRow(state.workspace, state.run_id, ev["seq"], p.item.raw, p.item.source, self.now)
        waiting[ev["seq"]] = row
        self.held_new.append(row)
        self.held_total += 1
        self.held_by_ws[state.workspace] = in_ws + 1
        self.report.held += 1
        return Outcome("held", f"waiting for seq {state.next_seq}", None, ev["event_id"], ev["run_id"])

    def held_in(self, workspace: str) -> int:
        """Events the workspace holds now (read from the store once per batch, then counted)."""
        n = self.held_by_ws.get(workspace)
        if n is None:
            n = 0
            if self.held_stored:  # stored, less those this batch released (dropped at flush)
                n = self.tx.count_held_in(workspace) - sum(1 for d in self.held_drop if d[0] == workspace)
            self.held_by_ws[workspace] = n
        return n

    def release(self, key: tuple[str, str], state: RunState) -> None:
        waiting = self.held.get(key)
        while waiting and state.next_seq in waiting:
            row = waiting.pop(state.next_seq)
            self.drop_held(row)
            item = Incoming(row.raw, row.source, row.workspace)
            parsed = parse_items([item])[0]
            if parsed.event is None or parsed.canonical is None:  # cannot happen: validated before
                self.quarantine_item(item, parsed.error or "contract: invalid")
                break
            ev = parsed.event
            known = self.known.get((ev["workspace"], ev["event_id"]))
            if known is not None:
                self.quarantine_item(item, f"conflict: event_id {ev['event_id']!r} already stored", ev)
                break
            outcome = self.accept(item, ev, parsed.canonical, _event_hash(parsed.canonical), state)
            if outcome.status != "accepted":
                break

    def drop_held(self, row: HeldRow) -> None:
        if row in self.held_new:
            self.held_new.remove(row)
        else:
            self.held_drop.append((row.workspace, row.run_id, row.seq))
        self.held_total -= 1
        if row.workspace in self.held_by_ws:
            self.held_by_ws[row.workspace] -= 1

    def accept(
        self,
        item: Incoming,
        ev: dict[str, Any],
        canonical: bytes,
        ehash: bytes,
        state: RunState,
    ) -> Outcome:
        """Accept the run's next event: its entry takes the batch's next position (``position``
        builds its bytes once the store has sequenced the batch)."""
        try:
            state.check(ev)
        except RunRuleError as e:
            return self.quarantine_item(item, f"rule: {e}", ev)
        step = ev["type"] in _APPROVAL_STEPS  # only approval events (and a run's end) pay
        facts: dict[str, Any] | None = None  # the approval event's whole data
        if step and ev["type"] != "run.completed":
            facts = loads(canonical)["data"]
            refusal = self.approvals.refusal(ev, facts, state.replay_of)
            if refusal is not None:
                return self.quarantine_item(item, f"rule: {refusal}", ev)
        key = (state.workspace, state.run_id)
        if key not in self.chain:
            self.chain[key] = state.last_hash
        position = len(self.pending)
        state.apply(ev, "")  # its hash links the chain once it has a position (see position())
        self.dirty.add(key)
        self.known[(ev["workspace"], ev["event_id"])] = (ev["run_id"], ev["seq"], ehash)
        outcome = Outcome("accepted", None, None, ev["event_id"], ev["run_id"])
        self.pending.append((outcome, item.source, ev, canonical, key))
        self.report.accepted += 1
        if step:
            self.approvals.accepted(ev, facts, _provisional(position), state)
        return outcome

    def add_system_entry(
        self,
        kind: str,
        body: Callable[[int], Mapping[str, Any]],
        columns: Callable[[int], dict[str, Any]] | None = None,
    ) -> _System:
        """A system entry taking the batch's next position; ``body`` and ``columns`` are given
        its index once the batch is sequenced (``.row`` is then the entry)."""
        entry = _System(kind, body, columns)
        self.pending.append(entry)
        return entry

    def position(self) -> None:
        """Sequence the batch's entries, then build their bytes and leaf hashes and link each
        run's chain: outside any ledger-wide lock, since the positions are the batch's own."""
        if not self.pending:
            return
        base = self.base = self.tx.sequence(len(self.pending))
        last = self.chain
        middle, received_json, source_json = self.middle, self.received_json, self.source_json
        origin, received = self.ledger.config.origin, self.received
        entries, leaves = self.entries, self.leaves
        for index, p in enumerate(self.pending, base):
            if isinstance(p, _System):
                data = dumps({**p.body(index), "index": index, "kind": p.kind, "log": origin,
                              "received": received})
                leaf = merkle.leaf_hash(data)
                p.row = EntryRow(index=index, data=data, leaf_hash=leaf, kind=p.kind,
                                 **(p.columns(index) if p.columns is not None else {}))
                entries.append(p.row)
                leaves.append(leaf)
                continue
            outcome, source, ev, canonical, key = p
            prev = last[key]
            # Same bytes as dumps({...}) with sorted keys, assembled directly: this is the hot path.
            data = b"".join(
                (
                    b'{"event":',
                    canonical,
                    b',"index":',
                    str(index).encode(),
                    middle,
                    b"null" if prev is None else b'"' + prev.encode() + b'"',
                    received_json,
                    source_json(source),
                    b"}",
                )
            )
            leaf = sha256(b"\x00" + data).digest()  # merkle.leaf_hash, inlined on the hot path
            last[key] = leaf.hex()
            outcome.index = index
            leaves.append(leaf)
            entries.append(
                EntryRow(
                    index=index,
                    data=data,
                    leaf_hash=leaf,
                    kind="event",
                    workspace=ev["workspace"],
                    run_id=ev["run_id"],
                    seq=ev["seq"],
                    event_id=ev["event_id"],
                    event_type=ev["type"],
                    event_time=ev["time"],
                )
            )
        for key, h in last.items():
            self.states[key].last_hash = h
        self.approvals.position(base)

    def flush(
        self,
        consumer: str | None,
        offsets: Mapping[tuple[str, int], int] | None,
        force_checkpoint: bool = False,
    ) -> AppendReport:
        """Write the batch, then integrate its entries into the tree (and sign a checkpoint if
        one is due): the ledger-wide serial step, entered by ``tx.head()``.

        The consumer offsets are written before the batch is sequenced: a batch takes every
        lock it needs before it has positions (see ``LedgerTx.sequence``).
        """
        tx = self.tx
        if consumer is not None and offsets:
            tx.save_offsets(consumer, offsets)
        self.position()
        if self.entries:
            tx.append_entries(self.entries)
        if self.dirty:
            tx.save_runs({k: self.states[k].to_bytes() for k in sorted(self.dirty)})
        self.approvals.flush()
        if self.quarantine:
            tx.add_quarantine(self.quarantine)
        if self.held_new:
            tx.put_held(self.held_new)
        if self.held_drop:
            tx.drop_held(self.held_drop)
        if not self.entries and not force_checkpoint:
            peek = tx.peek_head()
            if not self.ledger.checkpoint_due(peek, self.now):
                self.report.size = peek.size
                return self.report
        head = tx.head()
        if self.base is not None and head.size != self.base:
            raise StoreIntegrityError(
                f"the store sequenced positions from {self.base} but integrates at {head.size}"
            )
        tree = merkle.CompactRange(head.size, head.frontier)
        if self.leaves:
            tx.append_nodes(tree.append_many(self.leaves))
        head.size = tree.size
        head.frontier = list(tree.hashes)
        now = self.ledger.clock() if self.base is not None else self.now  # its turn may come later
        self.report.checkpoint = self.ledger.maybe_checkpoint(
            tx, head, tree.root(), max(now, head.checkpoint_time), force_checkpoint
        )
        tx.save_head(head)
        self.report.size = head.size
        return self.report


_CONFLICTS = 4
"""Tries of one write that a store's unique index may refuse: a first optimistic one, then with
every event id looked up (see ``_Batch.load``); beside concurrent writers an id they have in
flight can still be refused, and the next try sees it stored."""
_RETRIES = 32
"""Tries of one write that concurrent writers' failures may undo (StoreRetryError): each undo
means another writer failed or a deadlock was broken, never that this write cannot succeed."""


class Ledger:
    """The append-only, signed, Merkle-checkpointed ledger over one store."""

    def __init__(
        self,
        store: LedgerStore,
        signer: NoteSigner,
        config: LedgerConfig,
        clock: Clock,
    ) -> None:
        self.store = store
        self.signer = signer
        self.config = config
        self.clock = clock
        self._init_meta()

    def _init_meta(self) -> None:
        with self.store.transaction() as tx:
            origin = tx.meta("origin")
            if origin is None:
                tx.set_meta("origin", self.config.origin)
                tx.set_meta("initial_vkey", self.signer.vkey)
            elif origin != self.config.origin:
                raise TachographError(
                    f"store belongs to log {origin!r}, not {self.config.origin!r}"
                )
            if tx.meta(APPROVALS_INDEXED) is None:
                index_approvals(self.store, tx)
            if self.config.approval_decisions == "person" and tx.meta(DECISIONS_FROM) is None:
                tx.set_meta(DECISIONS_FROM, str(tx.head().size))

    def _write(self, attempt: Callable[[bool], _T]) -> _T:
        """Run one write, retried as ``_CONFLICTS`` and ``_RETRIES`` say; ``attempt(optimistic)``
        is one try (optimistic until the store's unique index refused one)."""
        optimistic, conflicts, retries = True, 0, 0
        while True:
            try:
                return attempt(optimistic)
            except StoreIntegrityError:
                optimistic, conflicts = False, conflicts + 1
                if conflicts >= _CONFLICTS:
                    raise
            except StoreRetryError:
                retries += 1
                if retries >= _RETRIES:
                    raise

    def append(
        self,
        items: Sequence[Incoming],
        *,
        consumer: str | None = None,
        offsets: Mapping[tuple[str, int], int] | None = None,
        parsed: Sequence[Parsed] | None = None,
    ) -> AppendReport:
        """Validate and append a batch in one transaction (with Kafka offsets, if given).

        ``parsed`` may carry the items already validated (e.g. by ``validate_raw`` in another
        process); it must be the result for exactly these items.
        """
        if parsed is None:
            parsed = parse_items(items)
        elif len(parsed) != len(items):
            raise ValueError("parsed results do not match the items")
        return self._write(lambda optimistic: self._append(parsed, consumer, offsets, optimistic))

    def _append(
        self,
        parsed: Sequence[Parsed],
        consumer: str | None,
        offsets: Mapping[tuple[str, int], int] | None,
        optimistic: bool,
    ) -> AppendReport:
        with self.store.append_transaction() as tx:
            batch = _Batch(self, tx, self.clock())
            batch.load(parsed, optimistic)
            batch.report.results = [batch.process(p) for p in parsed]
            return batch.flush(consumer, offsets)

    def expire_held(self) -> AppendReport:
        """Quarantine held events whose gap did not fill within the hold timeout."""
        return self._write(lambda _: self._expire_held(self.clock()))

    def _expire_held(self, now: float) -> AppendReport:
        older_than = now - self.config.held_timeout_s
        with self.store.append_transaction() as tx:
            batch = _Batch(self, tx, now)
            expired = tx.expired_held(older_than, 10_000)
            if expired:  # lock their runs, then read again what is still held: none was released
                tx.lock_runs(sorted({(r.workspace, r.run_id) for r in expired}))
                expired = tx.expired_held(older_than, 10_000)
            for row in expired:
                batch.quarantine_item(
                    Incoming(row.raw, row.source, row.workspace),
                    f"gap: run {row.run_id!r} seq {row.seq} waited {self.config.held_timeout_s:g}s "
                    "for earlier events that never arrived",
                )
                batch.held_drop.append((row.workspace, row.run_id, row.seq))
            return batch.flush(None, None)

    def append_records(self, records: Sequence[Record]) -> list[int]:
        """Append platform records (entry kind ``record``, see ``domain/records.py``) in one
        transaction; return their ledger indexes. The event path can never write this kind."""
        return self._write(lambda _: self._append_records(records))

    def _append_records(self, records: Sequence[Record]) -> list[int]:
        with self.store.append_transaction() as tx:
            batch = _Batch(self, tx, self.clock())
            decided = sorted({(r.workspace, str(r.data.get("approval_id")))
                              for r in records if r.type == APPROVAL_DECISION})
            batch.approvals.preload(decided)
            written = []
            for rec in records:
                if rec.type == APPROVAL_DECISION:
                    batch.approvals.decision(rec, _provisional(len(batch.pending)))
                written.append(batch.add_system_entry(
                    RECORD_KIND, partial(record_body, rec), partial(_record_columns, rec)
                ))
            batch.flush(None, None)
        return [w.row.index for w in written if w.row is not None]

    def checkpoint(self, force: bool = True) -> CheckpointRow | None:
        """A signed checkpoint covering the whole tree: signed now if the tree grew.

        With ``force=False`` only a checkpoint that is due (N entries or T seconds) is signed,
        and None is returned when none was.
        """
        with self.store.append_transaction() as tx:
            batch = _Batch(self, tx, self.clock())
            row = batch.flush(None, None, force_checkpoint=force).checkpoint
        if row is None and force:
            row = self.store.latest_checkpoint()
        return row

    def checkpoint_due(self, head: Head, now: float) -> bool:
        """Whether N entries or T seconds have passed since the head's last checkpoint."""
        grown = head.size - head.checkpoint_size
        return grown >= self.config.checkpoint_every or (
            grown > 0 and now - head.checkpoint_time >= self.config.checkpoint_interval_s
        )

    def maybe_checkpoint(
        self, tx: LedgerTx, head: Head, root: bytes, now: float, force: bool
    ) -> CheckpointRow | None:
        """Sign and store a checkpoint when N entries or T seconds have passed (or forced)."""
        grown = head.size - head.checkpoint_size
        if not (self.checkpoint_due(head, now) or (force and (grown > 0 or head.checkpoint_time == 0.0))):
            return None
        note = sign_checkpoint(Checkpoint(self.config.origin, head.size, root), self.signer)
        row = CheckpointRow(head.size, note, iso(now))
        tx.add_checkpoint(row)
        head.checkpoint_size = head.size
        head.checkpoint_time = now
        return row

    def rotate_key(self, new_signer: NoteSigner) -> CheckpointRow:
        """Record a key rotation in the ledger, signed by the old key, then switch keys."""
        report = self._write(lambda _: self._rotate_key(new_signer))
        self.signer = new_signer
        assert report.checkpoint is not None
        return report.checkpoint

    def _rotate_key(self, new_signer: NoteSigner) -> AppendReport:
        old = self.signer

        def body(index: int) -> dict[str, Any]:
            statement = rotation_statement(self.config.origin, index, old.vkey, new_signer.vkey)
            return {"rotation": {"old_vkey": old.vkey, "new_vkey": new_signer.vkey,
                                 "statement": old.sign(statement)}}

        with self.store.append_transaction() as tx:
            batch = _Batch(self, tx, self.clock())
            batch.add_system_entry("key.rotated", body)
            report = batch.flush(None, None, force_checkpoint=True)
            tx.set_meta("current_vkey", new_signer.vkey)
        return report

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size``."""
        if not 0 <= index < size <= self.store.size():
            raise NotFoundError(f"no entry {index} in a tree of size {size}")
        return merkle.inclusion_proof(index, size, self.store.node)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof between two tree sizes."""
        if not 0 < size1 <= size2 <= self.store.size():
            raise NotFoundError(f"no consistency proof from {size1} to {size2}")
        return merkle.consistency_proof(size1, size2, self.store.node)

    def root(self, size: int) -> bytes:
        """Root hash of the tree of ``size`` entries."""
        if size == 0:
            return merkle.EMPTY_ROOT
        return merkle.subtree_hash(0, size, self.store.node)


def _record_columns(rec: Record, index: int) -> dict[str, Any]:
    """The index columns of a record's entry at ``index``."""
    return {"workspace": rec.workspace, "event_type": rec.type, "event_time": rec.time,
            "event_id": record_id(index)}


def rotation_statement(origin: str, index: int, old_vkey: str, new_vkey: str) -> str:
    """The text an old key signs to hand over to a new one."""
    return f"{ROTATION_PREFIX}\n{origin}\n{index}\n{old_vkey}\n{new_vkey}\n"
