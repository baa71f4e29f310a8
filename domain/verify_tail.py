"""Verify only what was appended since a verification: the incremental half of ``verify_log``.

A passing ``verify_log`` returns its ``VerifyState``: the verified prefix's size and tree (as a
compact range), every run's last entry, the approvals recorded, the keys in force. From there,
``verify_tail`` checks the ledger as it is now:

1. every checkpoint the verification has not seen: signed by a key trusted for its size and
   naming the tree at its size (below the verified size, through a consistency proof to it);
2. each new entry, scanned exactly as ``verify_log`` scans it (leaf, index columns, run chain and
   seq, event id, approval, key rotation), stitched to the verified state; the tree grows from
   the verified frontier by the new leaves;
3. the store's tree of the new size (what it builds proofs and checkpoints from) is that tree,
   and its RFC 9162 consistency proof from the verified tree checks out against both roots: the
   prefix the store serves proofs from is still the one verified.

Entries below the verified size are not read again: a rewrite of their bytes that leaves the
stored tree alone is found by the next full verification (``tacho verify``). The one exception
is a run the state no longer holds in memory (a bounded state, ``domain/verify_chains.py``): its
last verified entry is read back and proven included in the verified tree before a new entry
is stitched to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from domain import merkle
from domain.errors import NotFoundError, ProofError, TachographError, VerificationError
from domain.ports import LedgerStore
from domain.verify import VerifyResult
from domain.verify_scan import RangeReader, RangeReaderBase, scan_chunk
from domain.verify_state import ParsedCheckpoint, Problem, VerifyState, parse_checkpoint

CHUNK = 4096


def verify_tail(
    state: VerifyState,
    reader: RangeReader,
    checkpoint_notes: Sequence[str],
    node: merkle.NodeGetter,
    *,
    end: int | None = None,
    allow_unsigned_tail: bool = False,
    progress: Callable[[int], object] | None = None,
) -> VerifyResult:
    """Verify entries ``state.position .. end - 1`` (default: every stored entry) on top of ``state``.

    Args:
        state: what a passing verification ended with (``VerifyResult.state``); advanced in
            place to ``end`` when this one passes, left part-way (to be dropped) when it fails.
        reader: the store's entries by range, with their index columns.
        checkpoint_notes: every stored checkpoint note of size up to ``end``, oldest first.
        node: the store's Merkle nodes (``LedgerStore.node``), what its proofs are built from.
        allow_unsigned_tail: do not fail on entries newer than the latest checkpoint.
        progress: called with the number of entries verified so far after each chunk.
    """
    if state.frontier is None:
        raise ValueError("verify_tail needs the state of a verification that ended")
    ids_checked = type(reader).repeated_event_id_in is not RangeReaderBase.repeated_event_id_in
    if not ids_checked and not state.ids_collected:
        raise ValueError("the reader checks no event ids and the state kept none")
    if looks_runs_up(reader):
        state.chains.lookup = reader.last_of_runs
    elif state.chains.capacity is not None:
        raise ValueError("the state keeps only recent runs and the reader cannot look others up")
    result = VerifyResult(ok=False, entries=state.position, checkpoints=len(checkpoint_notes),
                          approvals_checked_from=state.approvals_from, trusted_keys=state.trusted_keys)
    try:
        _verify_tail(state, reader, checkpoint_notes, node, reader.size() if end is None else end,
                     ids_checked, result, allow_unsigned_tail, progress)
    except VerificationError as e:
        result.reason = e.reason
        result.position = e.position
        return result
    result.ok = True
    result.state = state
    return result


def _verify_tail(state: VerifyState, reader: RangeReader, notes: Sequence[str], node: merkle.NodeGetter,
                 end: int, ids_checked: bool, result: VerifyResult, allow_unsigned_tail: bool,
                 progress: Callable[[int], object] | None) -> None:
    assert state.frontier is not None
    start = state.position
    verified_root = state.frontier.root()
    if end < start:
        raise VerificationError(
            f"the ledger holds {end} entries but {start} were verified (truncated, or rolled back "
            "to an earlier state)", end,
        )
    fresh = _new_checkpoints(state, notes)
    for size, items in sorted(_by_size(fresh).items()):
        if size <= start:  # signed after the verification read the checkpoints
            root = verified_root if size == start else _proven_root(node, size, start, verified_root)
            state.check_sigs(size, root, items)
    state.add_checkpoints(fresh)
    repeated = reader.repeated_event_id_in(start, end) if ids_checked and end > start else None
    tree = state.frontier.copy()
    typed = state.approvals_from is not None
    for first in range(start, end, CHUNK):
        last = min(first + CHUNK, end)
        rows = reader.read(first, last)
        leaves = _leaves([row[1] for row in rows])

        def root_at(size: int, first: int = first, leaves: list[bytes] = leaves) -> bytes:
            tree.append_many(leaves[tree.size - first : size - first])
            return tree.root()

        scan = scan_chunk(first, rows, state.origin, [], not ids_checked, typed, leaves)
        state.chains.known(scan.runs, state.position, tree.root, node)  # tree: of the verified entries
        errors: list[Problem] = state.take(scan, ids_checked, root_at)
        if repeated is not None and repeated[0] < last:
            errors.append((repeated[0], 2, f"event_id {repeated[1]!r} appears twice"))
        if errors:
            pos, _, reason = min(errors)
            raise VerificationError(reason, pos)
        tree.append_many(leaves[tree.size - first : scan.count])
        state.advance(scan)
        if progress is not None:
            progress(state.position)
    if state.position != end:
        raise VerificationError(f"entries {state.position}..{end - 1} are missing (deleted or truncated)",
                                state.position)
    _check_store_tree(node, start, end, verified_root, tree.root())
    state.frontier = tree
    state.finish(result, tree.root(), allow_unsigned_tail)


def looks_runs_up(reader: RangeReader) -> bool:
    """Whether ``reader`` reads a run's last entry back (a state over it may be bounded)."""
    return type(reader).last_of_runs is not RangeReaderBase.last_of_runs


def _check_store_tree(node: merkle.NodeGetter, start: int, end: int, verified_root: bytes, root: bytes) -> None:
    """The store's tree of ``end`` entries (what it builds proofs and checkpoints from) is the tree
    ``root`` computed from the bytes, and its consistency proof from the verified tree of
    ``start`` entries checks out against both roots."""
    try:
        store_root = merkle.subtree_hash(0, end, node) if end else merkle.EMPTY_ROOT
        if store_root != root:
            raise ProofError(f"its root is {store_root.hex()}, the entries' is {root.hex()}")
        if start:
            merkle.verify_consistency(start, end, verified_root, root, merkle.consistency_proof(start, end, node))
    except (ProofError, NotFoundError) as e:
        raise VerificationError(
            f"the store's Merkle tree of {end} entries is not the tree of the {start} entries verified "
            f"before and the entries since ({e}): stored nodes, or entries before {start}, were "
            "rewritten", None,
        ) from e


def _proven_root(node: merkle.NodeGetter, size: int, verified: int, verified_root: bytes) -> bytes:
    """The root of the first ``size`` verified entries, from the store's nodes proven consistent
    with the verified tree."""
    if size == 0:
        return merkle.EMPTY_ROOT
    try:
        root = merkle.subtree_hash(0, size, node)
        merkle.verify_consistency(size, verified, root, verified_root, merkle.consistency_proof(size, verified, node))
    except (ProofError, NotFoundError) as e:
        raise VerificationError(
            f"the store's tree of {size} entries is not a prefix of the tree of {verified} entries "
            f"verified before ({e}): entries before {verified} were rewritten since", size - 1,
        ) from e
    return root


def _new_checkpoints(state: VerifyState, notes: Sequence[str]) -> list[ParsedCheckpoint]:
    """The stored checkpoints the state has not taken yet, parsed; every one it took must still
    be stored, in the same order."""
    taken = state.notes
    if list(notes[: len(taken)]) != taken:
        missing = next((n for n in taken if n not in notes), None)
        what = "is no longer stored" if missing is not None else "is stored out of order"
        cp = parse_checkpoint(missing or taken[0], None)
        raise VerificationError(f"a checkpoint of size {cp.size} verified before {what}", cp.size)
    fresh: list[ParsedCheckpoint] = []
    for i, note in enumerate(notes[len(taken):], start=len(taken)):
        try:
            fresh.append((parse_checkpoint(note, state.origin), note, None))
        except TachographError as e:
            raise VerificationError(f"checkpoint #{i + 1} is malformed: {e}") from e
    return fresh


def _by_size(items: Sequence[ParsedCheckpoint]) -> dict[int, list[ParsedCheckpoint]]:
    out: dict[int, list[ParsedCheckpoint]] = {}
    for item in items:
        out.setdefault(item[0].size, []).append(item)
    return out


def _leaves(datas: list[Any]) -> list[bytes]:
    """Leaf hashes of stored entries (one that is not bytes: an empty hash, for the scan to name)."""
    try:
        return merkle.leaf_hashes(datas)
    except TypeError:
        return [merkle.leaf_hash(d) if isinstance(d, bytes) else b"" for d in datas]


class StoreReader(RangeReaderBase):
    """Any ``LedgerStore`` read by range through its port (a store with no reader of its own)."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    def size(self) -> int:
        return self.store.size()

    def read(self, start: int, end: int) -> list[tuple[Any, ...]]:
        return list(self.store.stored_entries(start, end))

    def last_of_runs(self, keys: Sequence[tuple[Any, Any]], before: int) -> dict[tuple[Any, Any], tuple[int, bytes]]:
        out: dict[tuple[Any, Any], tuple[int, bytes]] = {}
        for ws, run in keys:
            below = [e for e in self.store.run_entries(ws, run) if e.index < before]
            if below:
                last = max(below, key=lambda e: -1 if e.seq is None else e.seq)
                out[(ws, run)] = (last.index, last.data)
        return out
