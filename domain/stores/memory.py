"""In-memory ledger store: the port with real transaction semantics, for fast unit tests.

A transaction writes into a private overlay; readers (and other transactions) see its changes
only after commit, and an exception discards the overlay. Unique keys are enforced like the SQL
stores' constraints (``StoreIntegrityError``), and a failed write changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from domain.approvals import ApprovalRow
from domain.errors import NotFoundError, StoreError, StoreIntegrityError
from domain.ports import (
    CheckpointRow,
    CosignatureRow,
    EntryRow,
    Head,
    HeldRow,
    LedgerStore,
    LedgerTx,
    QuarantineRow,
    QuarantineUsage,
    event_hash_of,
    nodes_to_store,
)

RunKey = tuple[str, str]
SeqKey = tuple[str, str, int]
_MAX_INDEX = 2**62


def _seq_key(row: EntryRow) -> SeqKey | None:
    if row.workspace is None or row.run_id is None or row.seq is None:
        return None
    return (row.workspace, row.run_id, row.seq)


def _event_key(row: EntryRow) -> RunKey | None:
    if row.workspace is None or row.event_id is None:
        return None
    return (row.workspace, row.event_id)


def _copy_head(head: Head) -> Head:
    return replace(head, frontier=list(head.frontier))


@dataclass
class _Data:
    """Committed state of the store."""

    head: Head = field(default_factory=Head)
    meta: dict[str, str] = field(default_factory=dict)
    entries: dict[int, EntryRow] = field(default_factory=dict)
    by_seq: dict[SeqKey, int] = field(default_factory=dict)
    by_event: dict[RunKey, int] = field(default_factory=dict)
    nodes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    runs: dict[RunKey, bytes] = field(default_factory=dict)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    quarantine_usage: dict[str | None, QuarantineUsage] = field(default_factory=dict)
    next_quarantine_id: int = 1
    held: dict[SeqKey, HeldRow] = field(default_factory=dict)
    offsets: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    cosignatures: dict[tuple[int, str], CosignatureRow] = field(default_factory=dict)
    approvals: dict[RunKey, ApprovalRow] = field(default_factory=dict)


class MemoryTx(LedgerTx):
    """Writes of one transaction, kept apart from the committed state until commit."""

    def __init__(self, base: _Data) -> None:
        self._base = base
        self._open = True
        self._head: Head | None = None
        self._meta: dict[str, str] = {}
        self._entries: dict[int, EntryRow] = {}
        self._by_seq: dict[SeqKey, int] = {}
        self._by_event: dict[RunKey, int] = {}
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._runs: dict[RunKey, bytes] = {}
        self._quarantine: list[QuarantineRow] = []
        self._held_put: dict[SeqKey, HeldRow] = {}
        self._held_drop: set[SeqKey] = set()
        self._offsets: dict[str, dict[tuple[str, int], int]] = {}
        self._checkpoints: list[CheckpointRow] = []
        self._approvals: dict[RunKey, ApprovalRow] = {}

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("this ledger transaction is already finished")

    def _held_visible(self) -> dict[SeqKey, HeldRow]:
        rows = {k: r for k, r in self._base.held.items() if k not in self._held_drop}
        rows.update(self._held_put)
        return rows

    def head(self) -> Head:
        self._check_open()
        return _copy_head(self._head if self._head is not None else self._base.head)

    def save_head(self, head: Head) -> None:
        self._check_open()
        self._head = _copy_head(head)

    def meta(self, key: str) -> str | None:
        self._check_open()
        return self._meta.get(key, self._base.meta.get(key))

    def set_meta(self, key: str, value: str) -> None:
        self._check_open()
        self._meta[key] = value

    def load_runs(self, keys: Sequence[RunKey]) -> dict[RunKey, bytes]:
        self._check_open()
        out: dict[RunKey, bytes] = {}
        for key in keys:
            state = self._runs.get(key, self._base.runs.get(key))
            if state is not None:
                out[key] = state
        return out

    def save_runs(self, states: Mapping[RunKey, bytes]) -> None:
        self._check_open()
        self._runs.update(states)

    def _entry(self, index: int) -> EntryRow | None:
        return self._entries.get(index, self._base.entries.get(index))

    def event_hashes(
        self, workspace_event_ids: Sequence[RunKey]
    ) -> dict[RunKey, tuple[str, int, bytes]]:
        self._check_open()
        out: dict[RunKey, tuple[str, int, bytes]] = {}
        for key in workspace_event_ids:
            index = self._by_event.get(key, self._base.by_event.get(key))
            row = None if index is None else self._entry(index)
            if row is not None and row.run_id is not None and row.seq is not None:
                out[key] = (row.run_id, row.seq, event_hash_of(row.data))
        return out

    def seq_hashes(self, keys: Sequence[SeqKey]) -> dict[SeqKey, bytes]:
        self._check_open()
        out: dict[SeqKey, bytes] = {}
        for key in keys:
            index = self._by_seq.get(key, self._base.by_seq.get(key))
            row = None if index is None else self._entry(index)
            if row is not None:
                out[key] = event_hash_of(row.data)
        return out

    def append_entries(self, rows: Sequence[EntryRow]) -> None:
        self._check_open()
        new_idx: set[int] = set()
        new_seq: dict[SeqKey, int] = {}
        new_event: dict[RunKey, int] = {}
        for r in rows:
            if r.index in new_idx or self._entry(r.index) is not None:
                raise StoreIntegrityError(f"ledger write rejected: entry {r.index} already exists")
            new_idx.add(r.index)
            sk, ek = _seq_key(r), _event_key(r)
            if sk is not None:
                if sk in new_seq or sk in self._by_seq or sk in self._base.by_seq:
                    raise StoreIntegrityError(
                        f"ledger write rejected: seq {sk[2]} of run {sk[1]!r} already exists"
                    )
                new_seq[sk] = r.index
            if ek is not None:
                if ek in new_event or ek in self._by_event or ek in self._base.by_event:
                    raise StoreIntegrityError(
                        f"ledger write rejected: event_id {ek[1]!r} already exists in {ek[0]!r}"
                    )
                new_event[ek] = r.index
        self._entries.update((r.index, r) for r in rows)
        self._by_seq.update(new_seq)
        self._by_event.update(new_event)

    def append_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self._check_open()
        new: dict[tuple[int, int], bytes] = {}
        for level, index, h in nodes_to_store(nodes):
            key = (level, index)
            if key in new or key in self._nodes or key in self._base.nodes:
                raise StoreIntegrityError(
                    f"ledger write rejected: Merkle node {level}/{index} already exists"
                )
            new[key] = h
        self._nodes.update(new)

    def add_quarantine(self, rows: Sequence[QuarantineRow]) -> None:
        self._check_open()
        for r in rows:
            size, digest = r.stored()
            self._quarantine.append(replace(r, id=None, raw_size=size, raw_sha256=digest, kept=len(r.raw)))

    def quarantine_kept_bytes(self, workspace: str | None) -> int:
        self._check_open()
        base = self._base.quarantine_usage.get(workspace, QuarantineUsage()).kept_bytes
        return base + sum(len(r.raw) for r in self._quarantine if r.workspace == workspace)

    def load_held(self, keys: Sequence[RunKey]) -> list[HeldRow]:
        self._check_open()
        wanted = set(keys)
        rows = [r for r in self._held_visible().values() if (r.workspace, r.run_id) in wanted]
        return sorted(rows, key=lambda r: (r.workspace, r.run_id, r.seq))

    def expired_held(self, older_than: float, limit: int) -> list[HeldRow]:
        self._check_open()
        rows = [r for r in self._held_visible().values() if r.held_at < older_than]
        rows.sort(key=lambda r: (r.held_at, r.workspace, r.run_id, r.seq))
        return rows[:limit]

    def count_held(self) -> int:
        self._check_open()
        return len(self._held_visible())

    def count_held_in(self, workspace: str) -> int:
        self._check_open()
        return sum(1 for ws, _run, _seq in self._held_visible() if ws == workspace)

    def put_held(self, rows: Sequence[HeldRow]) -> None:
        self._check_open()
        visible = self._held_visible()
        new: dict[SeqKey, HeldRow] = {}
        for r in rows:
            key = (r.workspace, r.run_id, r.seq)
            if key in new or key in visible:
                raise StoreIntegrityError(
                    f"ledger write rejected: seq {r.seq} of run {r.run_id!r} is already held"
                )
            new[key] = r
        self._held_put.update(new)

    def drop_held(self, keys: Sequence[SeqKey]) -> None:
        self._check_open()
        for key in keys:
            if self._held_put.pop(key, None) is None and key in self._base.held:
                self._held_drop.add(key)

    def save_offsets(self, consumer: str, offsets: Mapping[tuple[str, int], int]) -> None:
        self._check_open()
        self._offsets.setdefault(consumer, {}).update(offsets)

    def add_checkpoint(self, row: CheckpointRow) -> None:
        self._check_open()
        self._checkpoints.append(row)

    def approvals(self, keys: Sequence[RunKey]) -> dict[RunKey, ApprovalRow]:
        self._check_open()
        out: dict[RunKey, ApprovalRow] = {}
        for key in keys:
            row = self._approvals.get(key, self._base.approvals.get(key))
            if row is not None:
                out[key] = row
        return out

    def put_approvals(self, rows: Sequence[ApprovalRow]) -> None:
        self._check_open()
        self._approvals.update(((r.workspace, r.approval_id), r) for r in rows)

    def commit(self) -> None:
        """Apply the overlay to the committed state (caller holds the data lock)."""
        self._check_open()
        self._open = False
        d = self._base
        if self._head is not None:
            d.head = self._head
        d.meta.update(self._meta)
        d.entries.update(self._entries)
        d.by_seq.update(self._by_seq)
        d.by_event.update(self._by_event)
        d.nodes.update(self._nodes)
        d.runs.update(self._runs)
        for row in self._quarantine:
            d.quarantine.append(replace(row, id=d.next_quarantine_id))
            d.next_quarantine_id += 1
            u = d.quarantine_usage.get(row.workspace, QuarantineUsage())
            d.quarantine_usage[row.workspace] = QuarantineUsage(
                u.items + 1, u.kept_bytes + len(row.raw), u.truncated + row.truncated
            )
        for key in self._held_drop:
            d.held.pop(key, None)
        d.held.update(self._held_put)
        for consumer, offsets in self._offsets.items():
            d.offsets.setdefault(consumer, {}).update(offsets)
        d.checkpoints.extend(self._checkpoints)
        d.approvals.update(self._approvals)

    def discard(self) -> None:
        """Forget every write of this transaction."""
        self._open = False


class MemoryStore(LedgerStore):
    """A ledger held in process memory (lost on exit): the reference for the contract tests."""

    def __init__(self) -> None:
        self._data = _Data()
        self._write_lock = threading.RLock()
        self._data_lock = threading.RLock()
        self._in_tx = False

    @contextmanager
    def transaction(self) -> Iterator[LedgerTx]:
        with self._write_lock:
            if self._in_tx:
                raise StoreError("a ledger transaction is already open in this thread")
            self._in_tx = True
            tx = MemoryTx(self._data)
            try:
                yield tx
            except BaseException:
                tx.discard()
                raise
            else:
                with self._data_lock:
                    tx.commit()
            finally:
                self._in_tx = False

    def size(self) -> int:
        with self._data_lock:
            return self._data.head.size

    def _rows(self, start: int, end: int | None) -> list[EntryRow]:
        with self._data_lock:
            entries = self._data.entries
            if end is not None and end - start <= 4 * len(entries):
                return [entries[i] for i in range(start, end) if i in entries]
            stop = end if end is not None else _MAX_INDEX
            return [entries[i] for i in sorted(entries) if start <= i < stop]

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[EntryRow]:
        yield from self._rows(start, end)

    def raw_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        for row in self._rows(start, end):
            yield row.index, row.data

    def stored_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[Any, ...]]:
        for r in self._rows(start, end):
            yield (r.index, r.data, r.kind, r.workspace, r.run_id, r.seq, r.event_id,
                   r.event_type, r.event_time, r.leaf_hash)  # fmt: skip

    def entries_containing(self, needle: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
        return [(r.index, r.data) for r in self._rows(start, end) if needle in r.data]

    def run_entries(self, workspace: str, run_id: str) -> list[EntryRow]:
        with self._data_lock:
            rows = [
                r
                for r in self._data.entries.values()
                if r.workspace == workspace and r.run_id == run_id
            ]
        return sorted(rows, key=lambda r: (r.seq is None, r.seq or 0))

    def records(
        self, workspace: str, after: int = -1, limit: int = 100, record_type: str | None = None
    ) -> list[EntryRow]:
        with self._data_lock:
            rows = [
                r for i, r in self._data.entries.items()
                if i > after and r.kind == "record" and r.workspace == workspace
                and (record_type is None or r.event_type == record_type)
            ]
        return sorted(rows, key=lambda r: r.index)[:limit]

    def records_of_types(
        self, workspace: str, record_types: Sequence[str], after: int = -1, limit: int = 1000
    ) -> list[EntryRow]:
        wanted = set(record_types)
        with self._data_lock:
            rows = [
                r for i, r in self._data.entries.items()
                if i > after and r.kind == "record" and r.workspace == workspace
                and r.event_type in wanted
            ]
        return sorted(rows, key=lambda r: r.index)[:limit]

    def approval(self, workspace: str, approval_id: str) -> ApprovalRow | None:
        with self._data_lock:
            return self._data.approvals.get((workspace, approval_id))

    def approval_page(
        self, workspace: str, *, decided: bool, now: float, after: int = -1, limit: int = 100
    ) -> list[ApprovalRow]:
        with self._data_lock:
            rows = [r for r in self._data.approvals.values()
                    if r.workspace == workspace and r.requested_index > after
                    and (r.decision is not None if decided else r.status(now) == "pending")]
        return sorted(rows, key=lambda r: r.requested_index)[:limit]

    def workspaces_of_run(self, run_id: str) -> list[str]:
        with self._data_lock:
            return sorted({ws for ws, run, seq in self._data.by_seq if run == run_id and seq == 0})

    def stored_node(self, level: int, index: int) -> bytes:
        with self._data_lock:
            if level == 0:
                row = self._data.entries.get(index)
                found = None if row is None else row.leaf_hash
            else:
                found = self._data.nodes.get((level, index))
        if found is None:
            raise NotFoundError(f"no Merkle node at level {level} index {index}")
        return found

    def checkpoints(self) -> list[CheckpointRow]:
        with self._data_lock:
            return list(self._data.checkpoints)

    def latest_checkpoint(self) -> CheckpointRow | None:
        with self._data_lock:
            return self._data.checkpoints[-1] if self._data.checkpoints else None

    def add_cosignatures(self, rows: Sequence[CosignatureRow]) -> None:
        with self._data_lock:
            for row in rows:
                self._data.cosignatures[(row.size, row.witness)] = row

    def cosignatures(self, size: int) -> list[CosignatureRow]:
        with self._data_lock:
            found = [r for (s, _), r in self._data.cosignatures.items() if s == size]
        return sorted(found, key=lambda r: r.witness)

    def offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        with self._data_lock:
            return dict(self._data.offsets.get(consumer, {}))

    def quarantine(
        self,
        limit: int = 100,
        after_id: int = 0,
        *,
        workspace: str | None = None,
        preview: int | None = None,
    ) -> list[QuarantineRow]:
        with self._data_lock:
            rows = [
                r for r in self._data.quarantine
                if (r.id or 0) > after_id and (workspace is None or r.workspace == workspace)
            ][:limit]
        return rows if preview is None else [replace(r, raw=r.raw[:preview]) for r in rows]

    def quarantined(self, qid: int) -> QuarantineRow | None:
        with self._data_lock:
            return next((r for r in self._data.quarantine if r.id == qid), None)

    def quarantine_usage(self) -> dict[str | None, QuarantineUsage]:
        with self._data_lock:
            return dict(self._data.quarantine_usage)

    def quarantine_count(self) -> int:
        with self._data_lock:
            return len(self._data.quarantine)

    def get_meta(self, key: str) -> str | None:
        with self._data_lock:
            return self._data.meta.get(key)

    def close(self) -> None:
        """Nothing to release."""
