"""Verify a ledger from its stored bytes alone: leaves, run chains, the tree and checkpoints.

The verifier reads ``(index, bytes)`` pairs and signed checkpoint notes; it needs no database,
so the same code checks a live store, a Parquet export or a copied file.
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from domain import merkle
from domain.checkpoint import Checkpoint, open_checkpoint
from domain.errors import CheckpointError, SignatureError, TachographError, VerificationError
from domain.ledger import rotation_statement
from domain.note import NoteVerifier, open_note
from domain.verify_scan import (
    LAST_LEAF,
    LAST_SEQ,
    ApprovalNote,
    ChunkScan,
    NodeMap,
    RangeReader,
    RangeReaderBase,
    RunSpan,
    chain_broken,
    scan_chunk,
    scan_range,
    seq_gap,
)


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

    def to_json(self) -> dict[str, Any]:
        """The result as the JSON printed by ``tacho verify --json``."""
        return asdict(self)


@dataclass(frozen=True)
class Trusted:
    """A signed checkpoint kept outside the system, and where it came from (named in reasons)."""

    note: str
    label: str = "trusted checkpoint"


def _check_checkpoint(note: str, origin: str | None) -> Checkpoint:
    """Parse a checkpoint note without trusting it yet (signature checked separately)."""
    text = note.split("\n\n", 1)[0] + "\n"
    cp = Checkpoint.parse(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not this log's {origin!r}")
    return cp


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
        _verify(
            entries, checkpoint_notes, trusted_keys, origin, trusted,
            allow_unsigned_tail, result, chunk_bits, workers, progress, approvals_from,
        )
    except VerificationError as e:
        result.reason = e.reason
        result.position = e.position
        return result
    result.ok = True
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
) -> None:
    try:
        verifiers = [NoteVerifier.from_vkey(k) for k in trusted_keys]
    except TachographError as e:
        raise VerificationError(f"bad trusted key: {e}") from e
    if not verifiers:
        raise VerificationError("no trusted verifier key given")
    result.trusted_keys = [v.vkey for v in verifiers]
    labels: list[str | None] = [None] * len(checkpoint_notes) + [t.label for t in trusted]
    parsed: list[tuple[Checkpoint, str, str | None]] = []
    for i, (note, label) in enumerate(zip([*checkpoint_notes, *(t.note for t in trusted)], labels, strict=True)):
        try:
            cp = _check_checkpoint(note, origin)
        except TachographError as e:
            raise VerificationError(f"{label or f'checkpoint #{i + 1}'} is malformed: {e}") from e
        if origin is None:
            origin = cp.origin
        parsed.append((cp, note, label))
    _check_trusted_agree(parsed)
    by_size: dict[int, list[tuple[Checkpoint, str, str | None]]] = {}
    for item in parsed:
        by_size.setdefault(item[0].size, []).append(item)
    last_stored = 0
    for cp, _, label in parsed:
        if label is None:
            if cp.size < last_stored:
                raise VerificationError(
                    f"checkpoint sizes go backwards ({last_stored} then {cp.size})", cp.size
                )
            last_stored = cp.size

    # Keys: the first trusted keys sign from size 0; rotations add later keys.
    timeline: list[tuple[int, list[NoteVerifier]]] = [(0, verifiers)]

    def keys_for(size: int) -> list[NoteVerifier]:
        keys = timeline[0][1]
        for first, ks in timeline:
            if size >= first:
                keys = ks
        return keys

    def check_sigs(size: int, root: bytes) -> None:
        for cp, note, label in by_size.get(size, []):
            what = f"{label} (size {size})" if label else f"checkpoint of size {size}"
            try:
                open_checkpoint(note, keys_for(size), origin=origin)
            except (SignatureError, CheckpointError) as e:
                raise VerificationError(
                    f"{what} is not signed by a key trusted for that size: {e}", size
                ) from e
            if cp.root_hash != root and label:
                raise VerificationError(
                    f"{what} does not match the ledger's tree at that size: the entries before it "
                    "were rewritten after it was taken (a newer checkpoint signed over the "
                    "rewritten ledger does not make it valid)",
                    size - 1,
                )
            if cp.root_hash != root:
                raise VerificationError(
                    f"{what}: root hash does not match the entries (edited, deleted, inserted or "
                    "reordered entry before this size)",
                    size - 1,
                )

    sizes = sorted(by_size)
    nodes = NodeMap()
    chains: dict[tuple[Any, Any], RunSpan] = {}  # each run's span in the latest chunk that has it
    event_ids: set[str | None] = set()  # never holds None: it is discarded from each chunk first
    decisions: dict[tuple[Any, Any], tuple[Any, ...]] = {}  # (workspace, approval_id) -> (run, decision, by)
    replays: dict[tuple[Any, Any], Any] = {}  # (workspace, run) -> the run it replays
    repeated = _RepeatedIds(entries)
    ids_checked = repeated.checked
    check_sigs(0, merkle.EMPTY_ROOT)
    position = 0
    typed = approvals_from is not None  # approval.decided entries leave the fast path
    for scan in _scans(entries, origin, sizes, chunk_bits, workers, ids_checked, typed):
        repeated.start()  # after the first result: the workers are forked by then
        if scan.start != position:
            raise VerificationError(
                f"entries {position}..{scan.start - 1} are missing (deleted or truncated)", position
            )
        if origin is None:
            origin = scan.origin
        errors: list[tuple[int, int, str]] = [(scan.error[0], 0, scan.error[1])] if scan.error else []
        # stitch each run's first entry in this chunk to its last entry in earlier chunks
        for key, (first_position, first_prev, first_seq, _, _) in scan.runs.items():
            prev = chains.get(key)
            expected_prev = prev[LAST_LEAF] if prev else None
            expected_seq = prev[LAST_SEQ] + 1 if prev else 0
            if first_prev != expected_prev:
                errors.append((first_position, 1, chain_broken(key[1], first_prev, expected_prev)))
            elif first_seq != expected_seq:
                errors.append((first_position, 1, seq_gap(key[1], first_seq, expected_seq)))
        if not ids_checked:
            _check_event_ids(scan, event_ids, errors)
        if scan.approvals:
            _check_approvals(scan.approvals, decisions, replays, approvals_from, errors)
        limit = min(errors)[0] if errors else scan.start + scan.count
        for pos, d in scan.rotations:
            if pos >= limit:
                break
            try:
                new_key = _check_rotation(d, pos, origin, keys_for(pos + 1))
            except VerificationError as e:
                errors.append((pos, 3, e.reason))
                break
            timeline.append((pos + 2, [new_key]))
        nodes.nodes.update(scan.nodes)
        for size in sizes:
            if scan.start < size <= scan.start + scan.count and size <= limit:
                try:
                    check_sigs(size, nodes.root(size))
                except VerificationError as e:
                    errors.append((size - 1, 4, e.reason))
                    break
        if errors:
            repeated.raise_before(min(errors)[0])
            pos, _, reason = min(errors)
            raise VerificationError(reason, pos)
        repeated.raise_before(scan.start + scan.count, wait=False)
        chains.update(scan.runs)
        position = scan.start + scan.count
        if progress is not None:
            progress(position)
    repeated.raise_before(position)
    result.entries = position
    result.runs = len(chains)
    result.root = nodes.root(position).hex()
    beyond_trusted = [(cp, label) for cp, _, label in parsed if label and cp.size > position]
    if beyond_trusted:
        cp, label = max(beyond_trusted, key=lambda t: t[0].size)
        raise VerificationError(
            f"{label} covers {cp.size} entries but the ledger holds only {position}: a rollback "
            "(or truncation) of the ledger to an earlier state after that checkpoint was taken",
            position,
        )
    beyond = [cp for cp, _, _ in parsed if cp.size > position]
    if beyond:
        cp = max(beyond, key=lambda c: c.size)
        raise VerificationError(
            f"a checkpoint covers {cp.size} entries but the ledger holds only {position} "
            "(truncated tail or rollback to an earlier state)",
            position,
        )
    covered = max((cp.size for cp, _, _ in parsed), default=0)
    result.trusted_checkpoints = sorted(cp.size for cp, _, label in parsed if label)
    result.checkpoint_size = covered if parsed else None
    if covered < position and not allow_unsigned_tail:
        raise VerificationError(
            f"entries {covered}..{position - 1} are not covered by any signed checkpoint "
            "(run `tacho checkpoint` to sign them)",
            covered,
        )


def _check_trusted_agree(parsed: Sequence[tuple[Checkpoint, str, str | None]]) -> None:
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


def _check_approvals(found: Sequence[ApprovalNote], decisions: dict[tuple[Any, Any], tuple[Any, ...]],
                     replays: dict[tuple[Any, Any], Any], required_from: int | None,
                     errors: list[tuple[int, int, str]]) -> None:
    """Add an error for the first ``approval.decided`` (from ``required_from``) that repeats no
    earlier decision record; remember the decision records and the runs that are replays.

    A replay's ``approval.decided`` repeats, through ``replayed_from``, the decision recorded for
    an approval of the run it replays; any other run's repeats the decision on its own approval.
    """
    for note in found:
        if note.what == "decision":
            decisions.setdefault((note.workspace, note.approval_id), (note.run_id, note.decision, note.by))
        elif note.what == "replay":
            replays[(note.workspace, note.run_id)] = note.source
        elif required_from is not None and note.position >= required_from:
            why = _unbacked(note, decisions, replays.get((note.workspace, note.run_id)))
            if why is not None:
                errors.append((note.position, 2, f"approval.decided of approval {note.approval_id!r} in run "
                               f"{note.run_id!r} ({note.decision} by {note.by!r}) is not backed: {why}"))


def _unbacked(note: ApprovalNote, decisions: dict[tuple[Any, Any], tuple[Any, ...]],
              replay_of: Any) -> str | None:
    """Why an ``approval.decided`` repeats no recorded decision (``replay_of``: the run its run
    replays, if it is a replay), or None."""
    if replay_of is None and note.source is not None:
        return f"it names replayed_from {note.source!r} but run {note.run_id!r} is not a replay"
    if replay_of is not None and note.source is None:
        return f"run {note.run_id!r} replays {replay_of!r} and a replay's decision must name replayed_from"
    aid, run = (note.approval_id, note.run_id) if replay_of is None else (note.source, replay_of)
    made = decisions.get((note.workspace, aid))
    if made == (run, note.decision, note.by):
        return None
    if made is None:
        return ("no person's decision was recorded before it" if replay_of is None else
                f"no person's decision on approval {aid!r} of run {run!r} was recorded before it")
    return f"the recorded decision is {made[1]} by {made[2]!r} for run {made[0]!r}"


def _check_event_ids(scan: ChunkScan, seen_before: set[str | None], errors: list[tuple[int, int, str]]) -> None:
    """Add an error for the chunk's first event id that was seen before; remember the chunk's ids."""
    fresh = set(scan.event_ids)
    fresh.discard(None)
    if len(fresh) != len(scan.event_ids) - len(scan.rotations) or not seen_before.isdisjoint(fresh):
        seen: set[str] = set()
        for offset, k in enumerate(scan.event_ids):
            if k is not None and (k in seen_before or k in seen):
                errors.append((scan.start + offset, 2, f"event_id {k.split(chr(10))[1]!r} appears twice"))
                break
            seen.add(k) if k is not None else None
    seen_before |= fresh


def _check_rotation(
    d: dict[str, Any], position: int, origin: str | None, current: list[NoteVerifier]
) -> NoteVerifier:
    rot = d.get("rotation")
    if not isinstance(rot, dict):
        raise VerificationError("key rotation entry has no rotation object", position)
    try:
        new_key = NoteVerifier.from_vkey(str(rot.get("new_vkey")))
        old_key = NoteVerifier.from_vkey(str(rot.get("old_vkey")))
    except TachographError as e:
        raise VerificationError(f"key rotation names a malformed key: {e}", position) from e
    if old_key.vkey not in {k.vkey for k in current}:
        raise VerificationError(
            "key rotation is signed over by a key that was not trusted at that point", position
        )
    statement = rotation_statement(str(origin), position, old_key.vkey, new_key.vkey)
    try:
        opened = open_note(str(rot.get("statement")), [old_key])
    except SignatureError as e:
        raise VerificationError(f"key rotation statement is not signed by the old key: {e}", position) from e
    if opened.text != statement:
        raise VerificationError("key rotation statement does not match the entry", position)
    return new_key


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
