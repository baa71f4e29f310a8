"""Scan one aligned chunk of ledger entries: the per-entry half of verification.

A chunk starts at a multiple of its power-of-two size, so the perfect Merkle nodes it
computes are nodes of the whole tree. Chunks are independent, which lets the verifier scan
them in parallel processes and stitch run chains and tree roots together in order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal, NamedTuple

import msgspec
import orjson

from domain import merkle
from domain.approvals import APPROVAL_DECISION
from domain.records import RECORD_KIND, record_shape_error
from tachograph.contract.events import EVENT_TYPES

Node = tuple[int, int]  # (level, index)

StoredRow = tuple[Any, ...]
"""An entry as its store holds it: ``(bytes, kind, workspace, run_id, seq, event_id, event_type,
event_time, leaf_hash)``, the bytes followed by the columns indexed beside them."""

COLUMN_NAMES = ("kind", "workspace", "run_id", "seq", "event_id", "event_type", "event_time", "leaf_hash")


# One run's entries inside a chunk, as a list (cheap to build and to pickle):
# [first position, first prev (hex text or None), first seq, last leaf (hex text), last seq]
RunSpan = list[Any]
LAST_LEAF, LAST_SEQ = 3, 4


class ApprovalNote(NamedTuple):
    """An entry the parent's approval check reads, in ledger order.

    ``what``: ``decided`` (an ``approval.decided`` event: ``source`` is its ``replayed_from``),
    ``decision`` (an ``approval.decision`` record) or ``replay`` (a ``run.started`` with
    ``replay_of``: ``source`` is the run it replays).
    """

    position: int
    what: str
    workspace: Any
    approval_id: Any = None
    run_id: Any = None
    decision: Any = None
    by: Any = None
    source: Any = None


@dataclass
class ChunkScan:
    """What a chunk scan found."""

    start: int
    count: int = 0
    error: tuple[int, str] | None = None
    origin: str | None = None
    nodes: dict[Node, bytes] = field(default_factory=dict)
    runs: dict[tuple[Any, Any], RunSpan] = field(default_factory=dict)
    event_ids: list[str | None] = field(default_factory=list)  # "workspace\nevent_id" per entry
    rotations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    approvals: list[ApprovalNote] = field(default_factory=list)


def frontier_nodes(start: int, size: int, hashes: Sequence[bytes]) -> dict[Node, bytes]:
    """(level, index) of each frontier hash of a range starting at aligned ``start``."""
    out: dict[Node, bytes] = {}
    offset = 0
    i = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out[(level, (start + offset) >> level)] = hashes[i]
            offset += 1 << level
            i += 1
    return out


def scan_chunk(
    start: int,
    rows: Sequence[tuple[Any, ...]],
    origin: str | None,
    checkpoint_sizes: Sequence[int],
    collect_ids: bool = True,
    typed: bool = False,
    leaves: list[bytes] | None = None,
) -> ChunkScan:
    """Check each ``(index, bytes)`` or ``(index, StoredRow)`` entry on its own and within the chunk
    (``leaves``: their leaf hashes, when the caller has them).

    A stored index that is not its position ends the chunk there, with that reason.
    """
    stored = [row[1:] for row in rows] if rows and len(rows[0]) > 2 else None
    datas = [row[1] for row in rows]
    bad = next((k for k, row in enumerate(rows) if row[0] != start + k), None)
    collect_ids = collect_ids or stored is None  # ids left to the store only with its columns
    if bad is None:
        return scan_entries(start, datas, origin, checkpoint_sizes, stored, collect_ids, leaves, typed=typed)
    scan = scan_entries(start, datas[:bad], origin, checkpoint_sizes, stored and stored[:bad], collect_ids,
                        leaves and leaves[:bad], typed=typed)
    if scan.error is None:
        scan.error = (
            start + bad,
            f"stored index {rows[bad][0]} at position {start + bad}: "
            "an entry is missing or out of order",
        )
    return scan


SLOW_TYPES = ("approval.decided",)
"""Event types the fast path refuses (their type is not in ``_FastType``), so that ``_general``
sees them whole: the parent checks each against the decision records. Other events pay nothing,
but a replay's ``run.started`` (``replay_of`` set, see ``_NotReplay``), whose decisions repeat
those of the run it replays."""
_FastType: Any = Literal[tuple(t for t in EVENT_TYPES if t not in SLOW_TYPES)]


class _NotReplay(msgspec.Struct):
    """An event's ``data`` with no ``replay_of``: a replay's ``run.started`` leaves the fast path
    (when approvals are checked) so that ``_general`` notes which run it replays."""

    replay_of: None = None


class _Event(msgspec.Struct):
    """The envelope fields the scan checks; the event's other members are parsed and skipped."""

    event_id: str
    run_id: str
    seq: int
    workspace: str


class _EventEntry(msgspec.Struct, forbid_unknown_fields=True):
    """An event entry with exactly the members the ledger writes (``_general`` takes the rest)."""

    event: _Event
    index: int
    kind: str
    log: str
    prev: str | None
    received: msgspec.Raw
    source: msgspec.Raw


class _EventWithColumns(_Event):
    """``_Event`` with the type and time too: what the index columns are compared with."""

    time: str
    type: str


class _EventTyped(_Event):
    """``_Event`` whose type must be one the fast path takes (``SLOW_TYPES`` are not), and not a
    replay's ``run.started``."""

    type: _FastType
    data: _NotReplay = msgspec.field(default_factory=_NotReplay)


class _EventWithColumnsTyped(_Event):
    """``_EventWithColumns`` whose type must be one the fast path takes, and not a replay's start."""

    time: str
    type: _FastType
    data: _NotReplay = msgspec.field(default_factory=_NotReplay)


class _EventEntryWithColumns(_EventEntry, forbid_unknown_fields=True):
    """``_EventEntry`` whose event carries every indexed member (rows read with their columns)."""

    event: _EventWithColumns


class _EventEntryTyped(_EventEntry, forbid_unknown_fields=True):
    event: _EventTyped


class _EventEntryWithColumnsTyped(_EventEntry, forbid_unknown_fields=True):
    event: _EventWithColumnsTyped


# (rows read with their columns, approvals checked): the fast path's decoder. Only a ledger whose
# approvals are checked (``approvals_from``) sends its approval.decided entries to ``_general``.
_DECODERS = {
    (False, False): msgspec.json.Decoder(_EventEntry).decode,
    (True, False): msgspec.json.Decoder(_EventEntryWithColumns).decode,
    (False, True): msgspec.json.Decoder(_EventEntryTyped).decode,
    (True, True): msgspec.json.Decoder(_EventEntryWithColumnsTyped).decode,
}


def scan_entries(
    start: int,
    datas: Sequence[bytes],
    origin: str | None,
    checkpoint_sizes: Sequence[int],
    stored: Sequence[StoredRow] | None = None,
    collect_ids: bool = True,
    leaves: list[bytes] | None = None,
    typed: bool = False,
) -> ChunkScan:
    """Check the entries stored at positions ``start, start + 1, ...``; collect what stitching needs.

    With ``stored`` (the store's row of each entry), every index column must say what the
    entry's bytes say: the queries that find a run's entries trust the columns, not the bytes.
    Without ``collect_ids`` (only with ``stored``) event ids are not collected for the parent's
    uniqueness check: the store answers it over the compared columns (``repeated_event_id``).

    The loop is the verifier's hot path. Each entry is parsed whole, as strict JSON, by
    msgspec into the shape of an event entry (the members of ``agent`` and ``data`` are
    checked as JSON and skipped). An entry that fits, is valid UTF-8, and whose index, kind
    and log are what they must be has its run chain and seq checked here. Anything else, and
    every failure, goes through ``_general``, which parses the entry with orjson so the
    reasons are worked out in one place: the fast path accepts nothing that it rejects.
    """
    scan = ChunkScan(start=start, origin=origin)
    sizes = [s - start for s in checkpoint_sizes if start < s <= start + len(datas)]
    datas = datas if type(datas) is list else list(datas)
    try:
        if leaves is None:
            leaves = merkle.leaf_hashes(datas)  # the whole chunk at once (C where built)
    except TypeError:  # a stored entry that is not bytes: _general says so at its position
        leaves = [merkle.leaf_hash(d) if isinstance(d, bytes) else b"" for d in datas]
    decode = _DECODERS[(stored is not None, typed)]
    runs = scan.runs
    event_ids = scan.event_ids
    position = start
    log = origin
    rows = repeat(None) if stored is None else stored
    for data, leaf, row in zip(datas, leaves, rows, strict=False):  # rows may repeat None
        if log is not None and type(data) is bytes:
            try:
                e = decode(data)
                if not data.isascii():
                    data.decode()  # msgspec leaves UTF-8 unchecked in what it skips; orjson does not
            except (msgspec.DecodeError, UnicodeDecodeError):
                e = None
            if e is not None and e.index == position and e.kind == "event" and e.log == log:
                ev = e.event
                prev = e.prev
                seq = ev.seq
                if row is not None and row != (
                    data, "event", ev.workspace, ev.run_id, seq, ev.event_id,
                    ev.type, ev.time, leaf,  # type: ignore[attr-defined]  # _EventWithColumns
                ):
                    scan.error = (position, column_error(row, data, leaf) or "index columns differ")
                    break
                h = leaf.hex()
                key = (ev.workspace, ev.run_id)
                span = runs.get(key)
                if span is None:
                    runs[key] = [position, prev, seq, h, seq]
                elif prev != span[LAST_LEAF]:
                    scan.error = (position, chain_broken(ev.run_id, prev, span[LAST_LEAF]))
                    break
                elif seq != span[LAST_SEQ] + 1:
                    scan.error = (position, seq_gap(ev.run_id, seq, span[LAST_SEQ] + 1))
                    break
                else:
                    span[LAST_LEAF] = h
                    span[LAST_SEQ] = seq
                if collect_ids:
                    event_ids.append(f"{ev.workspace}\n{ev.event_id}")
                position += 1
                continue
        error = _general(scan, position, data, leaf, row)
        if error is not None:
            scan.error = (position, error)
            break
        log = scan.origin if type(scan.origin) is str else None
        position += 1
    scan.count = position - start
    wanted = sorted(s for s in sizes if s <= scan.count)
    scan.nodes = _perfect_nodes(start, leaves[: scan.count], [*wanted, scan.count])
    return scan


def _general(scan: ChunkScan, position: int, data: Any, leaf: bytes, row: StoredRow | None = None) -> str | None:
    """Check one entry of any kind (``leaf`` is its hash) by parsing all of it, and its stored
    row's columns when given (from the same parse); None or why it fails."""
    if not isinstance(data, bytes):
        return f"stored entry is {type(data).__name__}, not bytes"
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return f"entry bytes are not valid JSON ({e})"
    error = _check_parsed(scan, position, d, leaf)
    if error is None and row is not None:
        error = column_error(row, data, leaf, d)
    return error


def _check_parsed(scan: ChunkScan, position: int, d: Any, leaf: bytes) -> str | None:
    """``_general``'s checks of an entry parsed as JSON (``d``)."""
    if not isinstance(d, dict) or type(d.get("index")) is not int or d["index"] != position:
        got = d.get("index") if isinstance(d, dict) else "?"
        return (
            f"entry says index {got} but sits at position {position} "
            "(deleted, inserted, duplicated or reordered entry)"
        )
    log = d.get("log")
    if scan.origin is None:
        scan.origin = log
    if log != scan.origin:
        return f"entry belongs to log {log!r}, not {scan.origin!r} (spliced from another ledger)"
    kind = d.get("kind")
    if kind == "key.rotated":
        scan.rotations.append((position, d))
        scan.event_ids.append(None)
        return None
    if kind == RECORD_KIND:  # a platform record: shape only, it is in no run
        error = record_shape_error(d)
        if error is None:
            rec = d["record"]
            scan.event_ids.append(f"{rec['workspace']}\n{rec['record_id']}")
            if rec["type"] == APPROVAL_DECISION:
                _note_approval(scan, position, "decision", rec["workspace"], rec["data"])
        return error
    if kind != "event":
        return f"unknown entry kind {kind!r}"
    ev = d.get("event")
    if not isinstance(ev, dict):
        return "event entry has no event object"
    for name in ("workspace", "run_id", "event_id"):
        if type(ev.get(name)) is not str:
            return f"event entry's {name} is not a string: {ev.get(name)!r}"
    key = (ev["workspace"], ev["run_id"])
    seq, prev = ev.get("seq"), d.get("prev")
    if type(seq) is not int:
        return f"run {key[1]!r} has a seq that is not an integer: {seq!r}"
    span = scan.runs.get(key)
    if span is None:
        scan.runs[key] = [position, prev, seq, leaf.hex(), seq]
    elif prev != span[LAST_LEAF]:
        return chain_broken(key[1], prev, span[LAST_LEAF])
    elif seq != span[LAST_SEQ] + 1:
        return seq_gap(key[1], seq, span[LAST_SEQ] + 1)
    else:
        span[LAST_LEAF] = leaf.hex()
        span[LAST_SEQ] = seq
    scan.event_ids.append(f"{key[0]}\n{ev['event_id']}")
    etype, data = ev.get("type"), ev.get("data")
    data = data if isinstance(data, dict) else {}
    if etype in SLOW_TYPES:
        _note_approval(scan, position, "decided", key[0], {**data, "run_id": key[1]})
    elif etype == "run.started" and data.get("replay_of") is not None:
        scan.approvals.append(ApprovalNote(position, "replay", key[0], run_id=key[1], source=data["replay_of"]))
    return None


def _note_approval(scan: ChunkScan, position: int, what: str, workspace: str, data: dict[str, Any]) -> None:
    """Keep an ``approval.decided`` event or ``approval.decision`` record for the parent to match."""
    scan.approvals.append(ApprovalNote(position, what, workspace, data.get("approval_id"), data.get("run_id"),
                                       data.get("decision"), data.get("by"), data.get("replayed_from")))


def _event_columns(d: dict[str, Any]) -> tuple[Any, ...]:
    ev = d.get("event")
    ev = ev if isinstance(ev, dict) else {}
    return tuple(ev.get(k) for k in ("workspace", "run_id", "seq", "event_id", "type", "time"))


def _record_columns(d: dict[str, Any]) -> tuple[Any, ...]:
    rec = d.get("record")
    rec = rec if isinstance(rec, dict) else {}
    return (rec.get("workspace"), None, None, rec.get("record_id"), rec.get("type"), rec.get("time"))


COLUMNS_OF_KIND: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {
    "event": _event_columns,
    "record": _record_columns,
}
"""For each entry kind with index columns: (workspace, run_id, seq, event_id, event_type,
event_time) as its bytes say them (a record: its workspace, record_id, type and time). Any other
kind has all six NULL."""


def expected_columns(data: bytes, leaf: bytes, parsed: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """The stored row an entry's bytes call for (``StoredRow`` order; ``data`` parses as JSON,
    to ``parsed`` when the caller has it)."""
    d = orjson.loads(data) if parsed is None else parsed
    kind = d.get("kind")
    of_kind = COLUMNS_OF_KIND.get(kind) if isinstance(kind, str) else None
    return (data, kind, *(of_kind(d) if of_kind else (None,) * 6), leaf)


def column_error(row: StoredRow, data: bytes, leaf: bytes, parsed: dict[str, Any] | None = None) -> str | None:
    """Why a stored row's index columns disagree with its entry's bytes, or None."""
    expected = expected_columns(data, leaf, parsed)
    for name, got, want in zip(("data", *COLUMN_NAMES), row, expected, strict=True):
        if got != want or type(got) is not type(want):
            if name == "leaf_hash":
                got, want = (h.hex() if isinstance(h, bytes) else h for h in (got, want))
            return (
                f"stored column {name} is {got!r} but the entry's bytes say {want!r} "
                "(index column edited: lookups by run or event id would miss or misplace this entry)"
            )
    return None


def _perfect_nodes(start: int, leaves: list[bytes], sizes: Sequence[int]) -> dict[Node, bytes]:
    """Frontier nodes at each of ``sizes`` (relative to ``start``), from all levels at once."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        levels.append(merkle.node_level(levels[-1]))
    out: dict[Node, bytes] = {}
    for size in sizes:
        offset = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                out[(level, (start >> level) + (offset >> level))] = levels[level][offset >> level]
                offset += 1 << level
    return out


def chain_broken(run_id: Any, prev: Any, expected: Any) -> str:
    """Why a run's chain does not hold (hashes shown as hex text)."""
    prev, expected = (h.decode("ascii", "replace") if isinstance(h, bytes) else h for h in (prev, expected))
    return (
        f"run {run_id!r} chain broken: prev is {prev!r}, expected {expected!r} "
        "(an entry of this run was removed, inserted or spliced)"
    )


def seq_gap(run_id: Any, seq: Any, expected: Any) -> str:
    """Why a run's seq does not follow on."""
    return f"run {run_id!r} seq {seq} where {expected} was expected"


class RangeReaderBase(ABC):
    """Reads stored entries by index range; picklable, so worker processes read for themselves."""

    @abstractmethod
    def size(self) -> int:
        """Number of entries."""

    @abstractmethod
    def read(self, start: int, end: int) -> list[tuple[Any, ...]]:
        """(index, bytes) or (index, *StoredRow) for indices in [start, end), in order."""

    def repeated_event_id(self, end: int) -> tuple[int, str] | None:
        """The first position below ``end`` whose (workspace, event_id) column pair is stored
        before it too, with that event id; None when every pair is unique.

        A reader whose ``read_stored`` gives rows overrides this with one query over its event-id
        index, and the scan then leaves event ids to it: the columns are compared with the bytes
        of every entry, so unique columns are unique ids. A reader that does not override it has
        the scan collect every event id for the parent to check instead.
        """
        raise NotImplementedError

    def repeated_event_id_in(self, start: int, end: int) -> tuple[int, str] | None:
        """The first position in [``start``, ``end``) whose (workspace, event_id) column pair is
        stored before it too, with that event id; None when there is none.

        What ``verify_tail`` asks instead of keeping every verified id: a reader that does not
        override it has the verification keep them in memory.
        """
        raise NotImplementedError

    def last_of_runs(self, keys: Sequence[tuple[Any, Any]], before: int) -> dict[tuple[Any, Any], tuple[int, bytes]]:
        """Each (workspace, run_id) of ``keys``: its stored entry with the highest seq among those
        below ``before``, as (index, bytes); a run with none is left out.

        What ``verify_tail`` asks for a run whose last verified entry its state no longer holds
        (``domain/verify_chains.py``); over a reader that does not override it, a verification
        state keeps every run's.
        """
        raise NotImplementedError

    def read_checked(self, start: int, end: int) -> tuple[list[bytes], bytes, list[int]] | None:
        """Entries ``start .. end - 1`` with their index columns already compared with their
        bytes by the store's own code: ``(datas, stored leaves concatenated, offsets of entries
        whose columns it could not confirm)``; None when it cannot (``read_stored`` is used).
        """
        return None

    def read_stored(self, start: int, end: int) -> list[StoredRow] | None:
        """Each entry ``start .. end - 1`` as a ``StoredRow`` when every one is stored, else None.

        A store's reader overrides this when it can check that cheaply (a count over a primary
        key); on None, ``read`` is used and the scan names what is missing.
        """
        return None


RangeReader = RangeReaderBase


def scan_range(
    reader: RangeReader,
    start: int,
    end: int,
    origin: str | None,
    checkpoint_sizes: Sequence[int],
    ids_checked: bool = False,
    typed: bool = False,
) -> ChunkScan:
    """Read one chunk through ``reader`` and scan it (runs in a worker process).

    ``ids_checked``: the reader's store checks event-id uniqueness itself (``repeated_event_id``),
    so rows read with their columns collect no event ids.
    """
    checked = reader.read_checked(start, end)
    if checked is not None:
        return _scan_checked(reader, start, checked, origin, checkpoint_sizes, ids_checked, typed)
    stored = reader.read_stored(start, end)
    if stored is not None:
        return scan_entries(start, [row[0] for row in stored], origin, checkpoint_sizes, stored,
                            collect_ids=not ids_checked, typed=typed)
    return scan_chunk(start, reader.read(start, end), origin, checkpoint_sizes, not ids_checked, typed)


def _scan_checked(
    reader: RangeReader,
    start: int,
    checked: tuple[list[bytes], bytes, list[int]],
    origin: str | None,
    checkpoint_sizes: Sequence[int],
    ids_checked: bool,
    typed: bool = False,
) -> ChunkScan:
    """Scan a chunk whose columns the store compared (``read_checked``): check the stored leaves
    and decide the entries it was unsure of with ``column_error``; the first that differs ends
    the chunk there, unless the scan fails earlier."""
    datas, stored_leaves, unsure = checked
    leaves = merkle.leaf_hashes(datas)
    suspects = set(unsure)
    if b"".join(leaves) != stored_leaves:
        suspects.add(next(k for k, leaf in enumerate(leaves) if stored_leaves[32 * k : 32 * k + 32] != leaf))
    bad: tuple[int, str] | None = None
    for k in sorted(suspects):  # each one read again with its columns: the Python check decides
        rows = reader.read_stored(start + k, start + k + 1)
        error = column_error(rows[0], datas[k], leaves[k]) if rows else f"entry {start + k} went missing"
        if error is not None:
            bad = (k, error)
            break
    end = len(datas) if bad is None else bad[0]
    scan = scan_entries(start, datas[:end], origin, checkpoint_sizes, None, not ids_checked,
                        leaves=leaves[:end], typed=typed)
    if bad is not None and scan.error is None:
        scan.error = (start + bad[0], bad[1])
    return scan


class NodeMap:
    """Perfect-node hashes known so far; higher nodes are derived from lower ones on demand."""

    def __init__(self) -> None:
        self.nodes: dict[Node, bytes] = {}

    def get(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree (level, index)."""
        h = self.nodes.get((level, index))
        if h is None:
            if level == 0:
                raise KeyError((level, index))
            h = merkle.node_hash(self.get(level - 1, 2 * index), self.get(level - 1, 2 * index + 1))
            self.nodes[(level, index)] = h
        return h

    def root(self, size: int) -> bytes:
        """Root of the tree of ``size`` leaves."""
        if size == 0:
            return merkle.EMPTY_ROOT
        return merkle.subtree_hash(0, size, self.get)
