"""The ledger store port: what the ledger needs from a database, and nothing more.

Adapters (``domain/stores/memory.py``, ``sqlite.py``, ``postgres.py``) implement it; one abstract
contract suite (``tests/contract/store_contract.py``) runs against each of them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from domain import merkle
from domain.approvals import ApprovalRow
from domain.errors import NotFoundError

STORED_NODE_LEVEL = 4
"""Stores keep the Merkle nodes from this level up: about one row per 8 entries, not one per entry.

A node below it covers 2, 4 or 8 entries and is computed from their leaf hashes when a proof
asks for it: writing one node row per entry cost the appending process about 8 % of its CPU.
"""


def nodes_to_store(nodes: Sequence[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """The (level, index, hash) nodes a store keeps, of those an append completed."""
    return [n for n in nodes if n[0] >= STORED_NODE_LEVEL]



def first_repeated_event_id(
    execute: Callable[..., Any], end: int, mark: str
) -> tuple[int, str] | None:
    """The first position below ``end`` whose (workspace, event_id) columns an earlier entry
    has too, and that id; None if there is none. ``execute`` runs SQL with ``mark`` parameters.

    One pass over the event-id index (grouped); only a repeated pair costs a second query.
    """
    pairs = execute(
        f"SELECT workspace, event_id FROM entries WHERE idx < {mark} AND event_id IS NOT NULL "
        "GROUP BY workspace, event_id HAVING count(*) > 1",
        (end,),
    ).fetchall()
    first: tuple[int, str] | None = None
    for workspace, event_id in pairs:
        row = execute(
            f"SELECT idx FROM entries WHERE workspace = {mark} AND event_id = {mark} AND idx < {mark} "
            "ORDER BY idx LIMIT 1 OFFSET 1",
            (workspace, event_id, end),
        ).fetchone()
        if row is not None and (first is None or row[0] < first[0]):
            first = (int(row[0]), str(event_id))
    return first


def repeated_event_id_in(
    execute: Callable[..., Any], start: int, end: int, mark: str
) -> tuple[int, str] | None:
    """The first position in [``start``, ``end``) whose (workspace, event_id) columns an earlier
    entry has too, and that id; None if there is none.

    One probe of the event-id index per entry of the range, however long the ledger before it:
    what verifying only the entries appended since the last verification asks.
    """
    row = execute(
        f"SELECT e.idx, e.event_id FROM entries e WHERE e.idx >= {mark} AND e.idx < {mark} "
        "AND e.event_id IS NOT NULL AND EXISTS (SELECT 1 FROM entries o WHERE o.workspace = e.workspace "
        "AND o.event_id = e.event_id AND o.idx < e.idx) ORDER BY e.idx LIMIT 1",
        (start, end),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def last_run_entries(execute: Callable[..., Any], keys: Sequence[tuple[Any, Any]], before: int,
                     mark: str, data: str = "data") -> dict[tuple[Any, Any], tuple[int, bytes]]:
    """``RangeReaderBase.last_of_runs`` over a SQL ``entries`` table (``mark``: the driver's
    placeholder; ``data``: the expression of the entry's bytes), one query per run on the
    (workspace, run_id, seq) index."""
    sql = (f"SELECT idx, {data} FROM entries WHERE workspace = {mark} AND run_id = {mark} AND idx < {mark} "
           "ORDER BY seq DESC LIMIT 1")
    out: dict[tuple[Any, Any], tuple[int, bytes]] = {}
    for ws, run in keys:
        row = execute(sql, (ws, run, before)).fetchone()
        if row is not None:
            out[(ws, run)] = (int(row[0]), bytes(row[1]))
    return out


class Source(NamedTuple):
    """Where an event came from: a Kafka position, a file line, an HTTP request...

    A NamedTuple rather than a frozen dataclass: one is built per consumed record.
    """

    kind: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    name: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The source as the JSON object written into the entry metadata."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.topic is not None:
            out["topic"] = self.topic
        if self.partition is not None:
            out["partition"] = self.partition
        if self.offset is not None:
            out["offset"] = self.offset
        if self.name is not None:
            out["name"] = self.name
        if self.line is not None:
            out["line"] = self.line
        return out

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> Source:
        """Rebuild a source from its JSON object."""
        return Source(
            kind=str(value.get("kind")),
            topic=value.get("topic"),
            partition=value.get("partition"),
            offset=value.get("offset"),
            name=value.get("name"),
            line=value.get("line"),
        )


class Incoming(NamedTuple):
    """One raw event as received by an entry point, before validation.

    ``workspace``: the workspace the entry point vouches for (an HTTP key's), to which the item
    is attributed in the quarantine when its own bytes name none.
    """

    raw: bytes
    source: Source
    workspace: str | None = None


@dataclass
class Head:
    """The log's head: its size, Merkle frontier and last checkpoint, locked while appending."""

    size: int = 0
    frontier: list[bytes] = field(default_factory=list)
    checkpoint_size: int = 0
    checkpoint_time: float = 0.0


@dataclass(slots=True)
class EntryRow:
    """One ledger entry as stored: the canonical bytes and the columns indexed beside them."""

    index: int
    data: bytes
    leaf_hash: bytes
    kind: str
    workspace: str | None = None
    run_id: str | None = None
    seq: int | None = None
    event_id: str | None = None
    event_type: str | None = None
    event_time: str | None = None
    event_hash: bytes | None = None  # no longer written: see event_hash_of


_EVENT_START = b'{"event":'
_EVENT_END = b',"index":'


def event_hash_of(data: bytes) -> bytes:
    """SHA-256 of the event an event entry's bytes hold: what deduplication compares.

    Worked out from the stored bytes each time, never kept in a column beside them: a column
    would be one more copy that verification has to compare (the write path looks stored events
    up only when one comes out of order or again). The ledger writes an event entry as
    ``{"event":<canonical event>,"index":...}`` and no string inside it holds an unescaped
    quote, so the event's bytes end at the last ``,"index":``.
    """
    end = data.rfind(_EVENT_END)
    body = data[len(_EVENT_START) : end] if data.startswith(_EVENT_START) and end > 0 else data
    return hashlib.sha256(body).digest()


@dataclass(frozen=True)
class QuarantineRow:
    """A message that could not be accepted, kept with its raw bytes and the reason.

    ``raw`` is what the store keeps (on a list read, a preview of it); ``raw_size`` and
    ``raw_sha256`` describe the message as received, and ``kept`` is how many of its bytes the
    store keeps: fewer than ``raw_size`` once the workspace's quarantine was over its budget.
    Stores fill all three on read; a writer may leave them None (meaning: all of ``raw``).
    """

    raw: bytes
    reason: str
    source: Source
    received: str
    workspace: str | None = None
    run_id: str | None = None
    event_id: str | None = None
    id: int | None = None
    raw_size: int | None = None
    raw_sha256: bytes | None = None
    kept: int | None = None

    def stored(self) -> tuple[int, bytes]:
        """(raw_size, raw_sha256) to store: as given, or those of ``raw``."""
        size = len(self.raw) if self.raw_size is None else self.raw_size
        digest = hashlib.sha256(self.raw).digest() if self.raw_sha256 is None else self.raw_sha256
        return size, digest

    @property
    def truncated(self) -> bool:
        """The store keeps fewer bytes than were received."""
        return (self.kept if self.kept is not None else len(self.raw)) < (
            self.raw_size if self.raw_size is not None else len(self.raw)
        )


@dataclass(frozen=True)
class QuarantineUsage:
    """What one quarantine bucket (a workspace, or None: unattributed) holds."""

    items: int = 0
    kept_bytes: int = 0
    truncated: int = 0


@dataclass(frozen=True)
class HeldRow:
    """An event that arrived ahead of a gap in its run, waiting for the gap to fill."""

    workspace: str
    run_id: str
    seq: int
    raw: bytes
    source: Source
    held_at: float


@dataclass(frozen=True)
class CheckpointRow:
    """A signed checkpoint as stored."""

    size: int
    note: str
    created: str


@dataclass(frozen=True)
class CosignatureRow:
    """A witness's cosignature of the stored checkpoint of ``size`` (c2sp.org/tlog-cosignature)."""

    size: int
    witness: str  # the witness key: <name>+<8 hex key ID>
    line: str  # the note signature line as the witness sent it, newline included
    timestamp: int  # when the witness signed (unix seconds, from the signature)


class LedgerTx(ABC):
    """One store transaction; everything written through it commits or rolls back together."""

    @abstractmethod
    def head(self) -> Head:
        """Read (and lock, where the adapter can) the log head."""

    @abstractmethod
    def save_head(self, head: Head) -> None:
        """Persist the head."""

    @abstractmethod
    def meta(self, key: str) -> str | None:
        """Read one ledger metadata value."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Write one ledger metadata value."""

    @abstractmethod
    def load_runs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """Serialized run states for the given (workspace, run_id) keys that exist."""

    @abstractmethod
    def save_runs(self, states: Mapping[tuple[str, str], bytes]) -> None:
        """Upsert serialized run states."""

    @abstractmethod
    def event_hashes(
        self, workspace_event_ids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, int, bytes]]:
        """For stored (workspace, event_id): (run_id, seq, ``event_hash_of`` its bytes)."""

    @abstractmethod
    def seq_hashes(self, keys: Sequence[tuple[str, str, int]]) -> dict[tuple[str, str, int], bytes]:
        """For stored (workspace, run_id, seq): ``event_hash_of`` its bytes."""

    @abstractmethod
    def append_entries(self, rows: Sequence[EntryRow]) -> None:
        """Insert entries (indices are contiguous after the head)."""

    @abstractmethod
    def append_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        """Insert complete Merkle nodes (level, index, hash); only those ``nodes_to_store`` keeps."""

    @abstractmethod
    def add_quarantine(self, rows: Sequence[QuarantineRow]) -> None:
        """Keep rejected messages with their reason (and count them in their bucket's usage)."""

    @abstractmethod
    def quarantine_kept_bytes(self, workspace: str | None) -> int:
        """Raw bytes the quarantine keeps for one workspace (None: the unattributed bucket)."""

    @abstractmethod
    def load_held(self, keys: Sequence[tuple[str, str]]) -> list[HeldRow]:
        """Held events of the given runs."""

    @abstractmethod
    def expired_held(self, older_than: float, limit: int) -> list[HeldRow]:
        """Held events held since before ``older_than`` (oldest first)."""

    @abstractmethod
    def count_held(self) -> int:
        """Number of held events."""

    @abstractmethod
    def count_held_in(self, workspace: str) -> int:
        """Number of held events of one workspace (its share of the hold buffer)."""

    @abstractmethod
    def put_held(self, rows: Sequence[HeldRow]) -> None:
        """Hold events until their gap fills."""

    @abstractmethod
    def drop_held(self, keys: Sequence[tuple[str, str, int]]) -> None:
        """Forget held events (released or quarantined)."""

    @abstractmethod
    def save_offsets(self, consumer: str, offsets: Mapping[tuple[str, int], int]) -> None:
        """Store the next offset to read per (topic, partition) for a consumer group."""

    @abstractmethod
    def add_checkpoint(self, row: CheckpointRow) -> None:
        """Store a signed checkpoint."""

    @abstractmethod
    def approvals(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], ApprovalRow]:
        """The stored approval rows of the given (workspace, approval_id) keys that exist."""

    @abstractmethod
    def put_approvals(self, rows: Sequence[ApprovalRow]) -> None:
        """Insert or replace approval rows (by workspace and approval_id)."""

    # -- appending beside other writers ---------------------------------------------------------
    # An adapter whose transactions are serialised whole (memory, SQLite, PostgreSQL's serial
    # mode) keeps these defaults. One whose appends run concurrently (PostgreSQL) locks only what
    # a batch touches, and serialises just ``sequence`` and the integration that ``head`` starts:
    # see docs/decisions/0010-postgres-batched-integration.md.

    def lock_runs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """Lock these runs against other writers until the transaction ends; return their states.

        A writer of a run waits for the one holding it, then reads what that one committed, so
        each run's seq, chain and held events are the latest. Default: ``load_runs``.
        """
        return self.load_runs(keys)

    def lock_approvals(self, keys: Sequence[tuple[str, str]]) -> None:
        """Lock these (workspace, approval_id) rows, existing or not, until the transaction ends.

        Default: nothing to do, the transaction is serialised whole.
        """
        return None

    def lock_exceptions(self) -> None:
        """Lock the ledger-wide hold buffer and quarantine budgets until the transaction ends.

        Taken before reading their counts by a batch about to hold or quarantine an item.
        Default: nothing to do, the transaction is serialised whole.
        """
        return None

    def sequence(self, count: int) -> int:
        """Assign ``count`` (>= 1) consecutive ledger positions to this transaction; the first.

        The transaction writes its entries at them, then integrates them: ``head()`` waits until
        every earlier position is integrated and returns a head whose size is the first one.
        Whatever else the transaction locks (runs, approvals, exceptions, the rows it upserts
        such as consumer offsets) it locks before this call, so that a batch waiting for its
        turn never waits for a later one. Default: the transaction is serialised, so it appends
        at the head.
        """
        return self.head().size

    def peek_head(self) -> Head:
        """The head as last committed, without locking it. Default: ``head()``."""
        return self.head()


class LedgerStore(ABC):
    """A ledger database: transactions for writers, plain reads for everyone else."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[LedgerTx]:
        """Open a write transaction (serialised against other writers)."""

    def append_transaction(self) -> AbstractContextManager[LedgerTx]:
        """Open a write transaction for appending: what the ledger's write path uses.

        An adapter that lets appends run side by side serialises in it only ``sequence`` and the
        integration from ``head()`` to commit (``LedgerTx`` says how). Default: ``transaction()``.
        """
        return self.transaction()

    @abstractmethod
    def size(self) -> int:
        """Number of entries."""

    @abstractmethod
    def entries(self, start: int = 0, end: int | None = None) -> Iterator[EntryRow]:
        """Entries in index order, from ``start`` up to (not including) ``end``."""

    @abstractmethod
    def raw_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(index, stored bytes) in index order: all the verifier reads."""

    @abstractmethod
    def stored_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[Any, ...]]:
        """``(index, *StoredRow)`` in index order: the bytes and the index columns beside them.

        What ``tacho verify`` reads from a store, to check the columns against the bytes.
        """

    @abstractmethod
    def entries_containing(self, needle: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
        """(index, stored bytes) of the entries in [start, end) whose bytes contain ``needle``.

        Searches the bytes, not the index columns: what an evidence bundle uses to make sure
        no entry of a run was left out by an edited column.
        """

    @abstractmethod
    def run_entries(self, workspace: str, run_id: str) -> list[EntryRow]:
        """Entries of one run in seq order."""

    @abstractmethod
    def workspaces_of_run(self, run_id: str) -> list[str]:
        """Workspaces holding a run with this id."""

    @abstractmethod
    def records(
        self, workspace: str, after: int = -1, limit: int = 100, record_type: str | None = None
    ) -> list[EntryRow]:
        """A workspace's platform records (entry kind ``record``) after ledger index ``after``,
        oldest first, at most ``limit``; only those of ``record_type`` when given."""

    @abstractmethod
    def records_of_types(
        self, workspace: str, record_types: Sequence[str], after: int = -1, limit: int = 1000
    ) -> list[EntryRow]:
        """A workspace's records of any of ``record_types`` after ledger index ``after``, oldest
        first, at most ``limit``: one indexed read (by workspace and type), however many records
        of other types the workspace has (what the current halts are folded from)."""

    @abstractmethod
    def approval(self, workspace: str, approval_id: str) -> ApprovalRow | None:
        """One approval of a workspace, or None."""

    @abstractmethod
    def approval_page(
        self, workspace: str, *, decided: bool, now: float, after: int = -1, limit: int = 100
    ) -> list[ApprovalRow]:
        """A workspace's approvals requested after ledger index ``after``, oldest request first, at
        most ``limit``: the decided ones, or (``decided=False``) those still pending at ``now``
        (undecided, run open, not timed out)."""

    def node(self, level: int, index: int) -> bytes:
        """Hash of a complete Merkle subtree (raises NotFoundError if it does not exist).

        Level 0 is an entry's leaf hash and from ``STORED_NODE_LEVEL`` up a stored node; a node
        in between is computed from the 2, 4 or 8 entries under it.
        """
        if not 0 < level < STORED_NODE_LEVEL:
            return self.stored_node(level, index)
        first = index << level
        hashes = [e.leaf_hash for e in self.entries(first, first + (1 << level))]
        if len(hashes) != 1 << level:
            raise NotFoundError(f"no Merkle node at level {level} index {index}")
        while len(hashes) > 1:
            hashes = merkle.node_level(hashes)
        return hashes[0]

    @abstractmethod
    def stored_node(self, level: int, index: int) -> bytes:
        """An entry's leaf hash (level 0) or a stored node (NotFoundError if there is none)."""

    @abstractmethod
    def checkpoints(self) -> list[CheckpointRow]:
        """All stored checkpoints, oldest first."""

    @abstractmethod
    def latest_checkpoint(self) -> CheckpointRow | None:
        """The newest checkpoint, if any."""

    @abstractmethod
    def add_cosignatures(self, rows: Sequence[CosignatureRow]) -> None:
        """Keep witness cosignatures (one per checkpoint size and witness: a newer one replaces).

        Written in its own short transaction, never under the append lock's head row: a witness
        answering late must not hold up appends.
        """

    @abstractmethod
    def cosignatures(self, size: int) -> list[CosignatureRow]:
        """The stored cosignatures of the checkpoint of ``size``, by witness."""

    @abstractmethod
    def offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        """Next offsets to read per (topic, partition) for a consumer group."""

    @abstractmethod
    def quarantine(
        self,
        limit: int = 100,
        after_id: int = 0,
        *,
        workspace: str | None = None,
        preview: int | None = None,
    ) -> list[QuarantineRow]:
        """Quarantined messages, oldest first.

        Args:
            workspace: only this workspace's (default: every bucket's).
            preview: read at most this many raw bytes of each (default: all it keeps).
        """

    @abstractmethod
    def quarantined(self, qid: int) -> QuarantineRow | None:
        """One quarantined message with every raw byte kept, or None."""

    @abstractmethod
    def quarantine_usage(self) -> dict[str | None, QuarantineUsage]:
        """Items, kept bytes and truncated items per bucket (None: unattributed)."""

    @abstractmethod
    def quarantine_count(self) -> int:
        """Number of quarantined messages."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """Read one ledger metadata value outside a transaction."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
