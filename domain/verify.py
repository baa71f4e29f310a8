"""Verify a ledger from its stored bytes alone: leaves, run chains, the tree and checkpoints.

The verifier reads ``(index, bytes)`` pairs and signed checkpoint notes; it needs no database,
so the same code checks a live store, a Parquet export or a copied file.
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from domain import merkle
from domain.errors import TachographError, VerificationError
from domain.verify_scan import (
    ChunkScan,
    NodeMap,
    RangeReader,
    RangeReaderBase,
    scan_chunk,
    scan_range,
)
from domain.verify_state import ParsedCheckpoint, VerifyState, parse_checkpoint


@dataclass
class VerifyResult:
    """Outcome of a verification run."""

    ok: bool
    entries: int
    checkpoints: int
    root: str | None = None
    position: int | None = None
    reason: str | None = None
    trusted_keys: list[str] = field(default_factory=list)
    runs: int = 0
    trusted_checkpoints: list[int] = field(default_factory=list)  # their sizes, all proven
    checkpoint_size: int | None = None  # the newest checkpoint proven (stored or trusted)
    witnesses: dict[str, Any] | None = None  # filled by ``tacho verify --witness``
    approvals_checked_from: int | None = None  # approval.decided from here on repeat a person's decision
    state: VerifyState | None = field(default=None, repr=False, compare=False)
    """Of a verification that passed: what verifying the entries after it needs (``verify_tail``)."""

    def to_json(self) -> dict[str, Any]:
        """The result as the JSON printed by ``tacho verify --json``."""
        return asdict(replace(self, state=None), dict_factory=_without_state)


def _without_state(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in items if k != "state"}


@dataclass(frozen=True)
class Trusted:
    """A signed checkpoint kept outside the system, and where it came from (named in reasons)."""

    note: str
    label: str = "trusted checkpoint"


def verify_log(
    entries: Iterable[tuple[Any, ...]] | RangeReader,
    checkpoint_notes: Sequence[str],
    trusted_keys: Sequence[str],
    *,
    origin: str | None = None,
    trusted_checkpoint: str | None = None,
    allow_unsigned_tail: bool = False,
    workers: int = 1,
    trusted_checkpoints: Sequence[str | Trusted] = (),
    chunk_bits: int = 12,
    progress: Callable[[int], object] | None = None,
    approvals_from: int | None = None,
) -> VerifyResult:
    """Check every entry, run chain, Merkle root, checkpoint signature, key rotation and approval.

    Args:
        entries: ``(index, stored bytes)`` in storage order, or ``(index, *StoredRow)`` from a
            store (``LedgerStore.stored_entries``): then every index column is checked too.
        checkpoint_notes: stored signed checkpoints, oldest first.
        trusted_keys: verifier keys (vkey text) trusted for the first checkpoints; later keys
            are trusted only through rotation entries signed by an earlier trusted key.
        origin: the log's origin; taken from the first checkpoint when not given.
        trusted_checkpoint: a signed checkpoint kept outside the system (detects rollback).
        trusted_checkpoints: more of them (any order): each must be signed by a trusted key,
            match the ledger's tree at its size (so every older one is consistent with every
            newer one) and be no larger than the ledger.
        allow_unsigned_tail: do not fail on entries newer than the latest checkpoint.
        workers: processes scanning chunks of ``2**chunk_bits`` entries in parallel; give a
            ``RangeReader`` for a large ledger, as a plain iterable is read into memory first.
        progress: called with the number of entries verified so far after each chunk.
        approvals_from: every ``approval.decided`` at this position or later must repeat an
            earlier ``approval.decision`` record (same workspace, approval, run, decision and
            person), a replay's through ``replayed_from`` (an approval of the run it replays);
            the store keeps this position in its meta (``domain/approvals.py``).
    """
    result = VerifyResult(ok=False, entries=0, checkpoints=len(checkpoint_notes),
                          approvals_checked_from=approvals_from)
    trusted = [t if isinstance(t, Trusted) else Trusted(t) for t in trusted_checkpoints]
    if trusted_checkpoint is not None:
        trusted.append(Trusted(trusted_checkpoint))
    try:
        state = _verify(
            entries, checkpoint_notes, trusted_keys, origin, trusted,
            allow_unsigned_tail, result, chunk_bits, workers, progress, approvals_from,
        )
    except VerificationError as e:
        result.reason = e.reason
        result.position = e.position
        return result
    result.ok = True
    result.state = state
    return result


def _verify(
    entries: Iterable[tuple[Any, ...]] | RangeReader,
    checkpoint_notes: Sequence[str],
    trusted_keys: Sequence[str],
    origin: str | None,
    trusted: Sequence[Trusted],
    allow_unsigned_tail: bool,
    result: VerifyResult,
    chunk_bits: int = 12,
    workers: int = 1,
    progress: Callable[[int], object] | None = None,
    approvals_from: int | None = None,
) -> VerifyState:
    state = VerifyState.start(trusted_keys, origin, approvals_from)
    result.trusted_keys = state.trusted_keys
    labels: list[str | None] = [None] * len(checkpoint_notes) + [t.label for t in trusted]
    parsed: list[ParsedCheckpoint] = []
    for i, (note, label) in enumerate(zip([*checkpoint_notes, *(t.note for t in trusted)], labels, strict=True)):
        try:
            cp = parse_checkpoint(note, state.origin)
        except TachographError as e:
            raise VerificationError(f"{label or f'checkpoint #{i + 1}'} is malformed: {e}") from e
        if state.origin is None:
            state.origin = cp.origin
        parsed.append((cp, note, label))
    _check_trusted_agree(parsed)
    state.add_checkpoints(parsed)

    nodes = NodeMap()
    repeated = _RepeatedIds(entries)
    state.ids_collected = not repeated.checked
    state.check_sigs(0, merkle.EMPTY_ROOT)
    typed = approvals_from is not None  # approval.decided entries leave the fast path
    for scan in _scans(entries, state.origin, state.sizes, chunk_bits, workers, repeated.checked, typed):
        repeated.start()  # after the first result: the workers are forked by then
        nodes.nodes.update(scan.nodes)
        errors = state.take(scan, repeated.checked, nodes.root)
        if errors:
            repeated.raise_before(min(errors)[0])
            pos, _, reason = min(errors)
            raise VerificationError(reason, pos)
        repeated.raise_before(scan.start + scan.count, wait=False)
        state.advance(scan)
        if progress is not None:
            progress(state.position)
    repeated.raise_before(state.position)
    state.frontier = _frontier(nodes, state.position)
    state.finish(result, nodes.root(state.position), allow_unsigned_tail)
    return state


def _frontier(nodes: NodeMap, size: int) -> merkle.CompactRange:
    """The compact range of the tree of ``size`` leaves, from the perfect nodes scanned."""
    hashes = []
    offset = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            hashes.append(nodes.get(level, offset >> level))
            offset += 1 << level
    return merkle.CompactRange(size, hashes)


def _check_trusted_agree(parsed: Sequence[ParsedCheckpoint]) -> None:
    """Two trusted checkpoints of one size must name one root (else the log forked)."""
    seen: dict[int, tuple[bytes, str]] = {}
    for cp, _, label in parsed:
        if label is None:
            continue
        prior = seen.setdefault(cp.size, (cp.root_hash, label))
        if prior[0] != cp.root_hash:
            raise VerificationError(
                f"{prior[1]} and {label} are both of size {cp.size} but name different roots: "
                "the log showed two different histories (a fork)",
                cp.size - 1 if cp.size else None,
            )


class _RepeatedIds:
    """The store's answer on repeated event ids, asked on a thread while the chunks are scanned.

    Only a ``RangeReader`` whose store answers ``repeated_event_id`` is asked (``checked``);
    otherwise the scans collect event ids and ``_check_event_ids`` works on them.
    """

    def __init__(self, entries: Iterable[tuple[Any, ...]] | RangeReader) -> None:
        self.reader = entries if isinstance(entries, RangeReaderBase) else None
        self.checked = self.reader is not None and type(self.reader).repeated_event_id is not (
            RangeReaderBase.repeated_event_id
        )
        self.future: Future[tuple[int, str] | None] | None = None

    def start(self) -> None:
        """Ask the store, once (a thread: the query waits in SQLite or the server, not in Python)."""
        if self.checked and self.future is None and self.reader is not None:
            pool = ThreadPoolExecutor(max_workers=1)
            self.future = pool.submit(self.reader.repeated_event_id, self.reader.size())
            pool.shutdown(wait=False)

    def raise_before(self, limit: int, wait: bool = True) -> None:
        """Raise the repeated id if it is at a position below ``limit`` (waiting for the answer
        unless ``wait`` is false and it is not in yet)."""
        if not self.checked:
            return
        self.start()
        assert self.future is not None
        if not wait and not self.future.done():
            return
        found = self.future.result()
        if found is not None and found[0] < limit:
            raise VerificationError(f"event_id {found[1]!r} appears twice", found[0])


class _ListReader(RangeReaderBase):
    """Entries already in memory, read by range (forked workers inherit them)."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def size(self) -> int:
        return len(self.rows)

    def read(self, start: int, end: int) -> list[tuple[Any, ...]]:
        return self.rows[start:end]


def _scan_worker(
    reader: RangeReader,
    starts: Sequence[int],
    size: int,
    total: int,
    origin: str | None,
    sizes: Sequence[int],
    conn: Connection,
    ids_checked: bool = False,
    typed: bool = False,
) -> None:
    """Scan the chunks at ``starts`` in order, sending each result as soon as it is done."""
    # The collector has nothing to find here (a scan builds no cycles) and would walk the
    # parent's inherited objects, touching their pages: it stays off in this short-lived process.
    gc.disable()
    try:
        for start in starts:
            conn.send(scan_range(reader, start, min(start + size, total), origin, sizes, ids_checked, typed))
    except BaseException as e:
        conn.send(TachographError(f"verification worker failed: {type(e).__name__}: {e}"))
    finally:
        conn.close()


def _scans(
    entries: Iterable[tuple[Any, ...]] | RangeReader,
    origin: str | None,
    sizes: Sequence[int],
    chunk_bits: int,
    workers: int,
    ids_checked: bool = False,
    typed: bool = False,
) -> Iterator[ChunkScan]:
    """Scan aligned chunks in order, in this process or in ``workers`` processes.

    Worker ``w`` scans chunks ``w, w + workers, ...`` without waiting to be handed each one
    (with a ``RangeReader`` it reads them itself, so nothing large crosses a process
    boundary) and sends each result down its own pipe; results are taken in chunk order.
    """
    size = 1 << chunk_bits
    if workers <= 1:
        if isinstance(entries, RangeReaderBase):
            total = entries.size()
            for start in range(0, total, size):
                yield scan_range(entries, start, min(start + size, total), origin, sizes, ids_checked, typed)
        else:
            for n, chunk in enumerate(_chunks(entries, size)):
                yield scan_chunk(n * size, chunk, origin, sizes, typed=typed)
        return
    reader = entries if isinstance(entries, RangeReaderBase) else _ListReader(list(entries))
    total = reader.size()
    starts = range(0, total, size)
    workers = max(1, min(workers, len(starts)))
    ctx = multiprocessing.get_context()
    pipes: list[Connection] = []
    procs: list[BaseProcess] = []
    try:
        for w in range(workers):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_scan_worker,
                args=(reader, starts[w::workers], size, total, origin, sizes, send, ids_checked, typed),
                daemon=True,
            )
            proc.start()
            send.close()
            pipes.append(receive)
            procs.append(proc)
        for n in range(len(starts)):
            try:
                got = pipes[n % workers].recv()
            except EOFError:
                raise TachographError("a verification worker process ended without its result") from None
            if isinstance(got, TachographError):
                raise got
            yield got
    finally:
        for worker in procs:
            if worker.is_alive():
                worker.terminate()
        for worker in procs:
            worker.join()
        for pipe in pipes:
            pipe.close()


def _chunks(entries: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    it = iter(entries)
    while chunk := list(islice(it, size)):
        yield chunk
