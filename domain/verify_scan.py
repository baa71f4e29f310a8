"""Scan one aligned chunk of ledger entries: the per-entry half of verification.

A chunk starts at a multiple of its power-of-two size, so the perfect Merkle nodes it
computes are nodes of the whole tree. Chunks are independent, which lets the verifier scan
them in parallel processes and stitch run chains and tree roots together in order.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from domain import merkle

Node = tuple[int, int]  # (level, index)


@dataclass
class RunSpan:
    """One run's entries inside a chunk: how it starts (to stitch) and where it ends."""

    first_position: int
    first_prev: Any
    first_seq: Any
    run_id: Any
    last_leaf: str
    last_seq: int


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
    rows: Sequence[tuple[int, bytes]],
    origin: str | None,
    checkpoint_sizes: Sequence[int],
) -> ChunkScan:
    """Check each entry on its own and within the chunk; collect what stitching needs.

    The loop is the verifier's hot path: canonical event entries are read from their tails
    (see ``_fast_fields``) with everything in locals; any other entry, and every failure, goes
    through ``_general`` so the reasons are worked out in one place.
    """
    scan = ChunkScan(start=start, origin=origin)
    sizes = [s - start for s in checkpoint_sizes if start < s <= start + len(rows)]
    leaves: list[bytes] = []
    sha256 = hashlib.sha256
    loads = orjson.loads
    runs = scan.runs
    event_ids = scan.event_ids
    position = start
    for index, data in rows:
        fast = None
        if index == position and type(data) is bytes and data.startswith(b'{"event":{'):
            i = data.rfind(b',"index":')
            j = data.rfind(b',"event_id":', 0, i) if i > 0 else -1
            if j > 0:
                try:
                    fast = loads(b"[{" + data[j + 1 : i] + b",{" + data[i + 1 :] + b"]")
                except orjson.JSONDecodeError:
                    fast = None
        if fast is not None and len(fast) == 2 and type(fast[0]) is dict and type(fast[1]) is dict:
            ev, meta = fast
            log = meta.get("log")
            if scan.origin is None:
                scan.origin = log
            if (
                meta.get("index") == position
                and meta.get("kind") == "event"
                and log == scan.origin
                and type(ev.get("seq")) is int
            ):
                leaf = sha256(b"\x00" + data).digest()
                key = (ev.get("workspace"), ev.get("run_id"))
                seq = ev.get("seq")
                prev = meta.get("prev")
                span = runs.get(key)
                if span is None:
                    runs[key] = RunSpan(position, prev, seq, key[1], leaf.hex(), seq)
                elif prev != span.last_leaf:
                    scan.error = (position, chain_broken(key[1], prev, span.last_leaf))
                    break
                elif seq != span.last_seq + 1:
                    scan.error = (position, seq_gap(key[1], seq, span.last_seq + 1))
                    break
                else:
                    span.last_leaf = leaf.hex()
                    span.last_seq = seq
                event_ids.append(f"{key[0]}\n{ev.get('event_id')}")
                leaves.append(leaf)
                position += 1
                continue
        leaf_or_error = _general(scan, position, index, data)
        if isinstance(leaf_or_error, str):
            scan.error = (position, leaf_or_error)
            break
        leaves.append(leaf_or_error)
        position += 1
    scan.count = position - start
    wanted = sorted(s for s in sizes if s <= scan.count)
    scan.nodes = _perfect_nodes(start, leaves, [*wanted, scan.count])
    return scan


def _general(scan: ChunkScan, position: int, index: int, data: Any) -> bytes | str:
    """Check one entry of any kind by parsing all of it; return its leaf hash or why it fails."""
    if index != position:
        return f"stored index {index} at position {position}: an entry is missing or out of order"
    if not isinstance(data, bytes):
        return f"stored entry is {type(data).__name__}, not bytes"
    leaf = merkle.leaf_hash(data)
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return f"entry bytes are not valid JSON ({e})"
    if not isinstance(d, dict) or d.get("index") != position:
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
        return leaf
    if kind != "event":
        return f"unknown entry kind {kind!r}"
    ev = d.get("event")
    if not isinstance(ev, dict):
        return "event entry has no event object"
    key = (ev.get("workspace"), ev.get("run_id"))
    seq, prev = ev.get("seq"), d.get("prev")
    if type(seq) is not int:
        return f"run {key[1]!r} has a seq that is not an integer: {seq!r}"
    span = scan.runs.get(key)
    if span is None:
        scan.runs[key] = RunSpan(position, prev, seq, key[1], leaf.hex(), seq)
    elif prev != span.last_leaf:
        return chain_broken(key[1], prev, span.last_leaf)
    elif seq != span.last_seq + 1:
        return seq_gap(key[1], seq, span.last_seq + 1)
    else:
        span.last_leaf = leaf.hex()
        span.last_seq = seq
    scan.event_ids.append(f"{key[0]}\n{ev.get('event_id')}")
    return leaf


def _perfect_nodes(start: int, leaves: list[bytes], sizes: Sequence[int]) -> dict[Node, bytes]:
    """Frontier nodes at each of ``sizes`` (relative to ``start``), from all levels at once."""
    levels = [leaves]
    node = merkle.node_hash
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    out: dict[Node, bytes] = {}
    for size in sizes:
        offset = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                out[(level, (start >> level) + (offset >> level))] = levels[level][offset >> level]
                offset += 1 << level
    return out


def chain_broken(run_id: Any, prev: Any, expected: Any) -> str:
    return (
        f"run {run_id!r} chain broken: prev is {prev!r}, expected {expected!r} "
        "(an entry of this run was removed, inserted or spliced)"
    )


def seq_gap(run_id: Any, seq: Any, expected: Any) -> str:
    return f"run {run_id!r} seq {seq} where {expected} was expected"


class RangeReaderBase(ABC):
    """Reads stored entries by index range; picklable, so worker processes read for themselves."""

    @abstractmethod
    def size(self) -> int:
        """Number of entries."""

    @abstractmethod
    def read(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """(index, bytes) for indices in [start, end), in order."""


RangeReader = RangeReaderBase


def scan_range(
    reader: RangeReader, start: int, end: int, origin: str | None, checkpoint_sizes: Sequence[int]
) -> ChunkScan:
    """Read one chunk through ``reader`` and scan it (runs in a worker process)."""
    return scan_chunk(start, reader.read(start, end), origin, checkpoint_sizes)


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
