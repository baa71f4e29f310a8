"""RFC 9162 Merkle tree maths: hashing, the compact range, proof generation and verification."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from hashlib import sha256

from domain.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT: bytes = sha256(b"").digest()

NodeGetter = Callable[[int, int], bytes]
"""``get_node(level, index)``: hash of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_SIZE_BYTES = 8


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 || data)."""
    return sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash SHA-256(0x01 || left || right)."""
    return sha256(_NODE_PREFIX + left + right).digest()


def leaf_hashes(datas: list[bytes]) -> list[bytes]:
    """``leaf_hash`` of each entry of a list of bytes (TypeError naming anything else)."""
    return _leaf_hashes(datas)


def node_level(hashes: list[bytes]) -> list[bytes]:
    """The level above a list of hashes: ``node_hash`` of each pair (an odd last one left out)."""
    return _node_level(hashes)


def _py_leaf_hashes(datas: list[bytes]) -> list[bytes]:
    _check_bytes_list(datas)
    return [sha256(_LEAF_PREFIX + data).digest() for data in datas]


def _py_node_level(hashes: list[bytes]) -> list[bytes]:
    _check_bytes_list(hashes)
    pairs = iter(hashes)
    return [sha256(_NODE_PREFIX + left + right).digest() for left, right in zip(pairs, pairs, strict=False)]


def _check_bytes_list(items: list[bytes]) -> None:
    if not isinstance(items, list):
        raise TypeError(f"expected a list of bytes, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, bytes):
            raise TypeError(f"item {i} is {type(item).__name__}, not bytes")


# The optional C build of domain/_sha256batch.c hashes a whole list through one OpenSSL
# context (hashlib sets one up per hash, ≈ 0.4 µs each); without it, hashlib: same results.
try:
    from domain._sha256batch import leaf_hashes as _leaf_hashes
    from domain._sha256batch import node_level as _node_level

    NATIVE = True
except ImportError:  # pragma: no cover - depends on the build
    _leaf_hashes, _node_level = _py_leaf_hashes, _py_node_level
    NATIVE = False


class CompactRange:
    """The right-edge frontier of a tree: perfect-subtree roots for each set bit of ``size``.

    ``hashes`` holds the roots largest (leftmost) first, so ``len(hashes) == size.bit_count()``.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        hs = list(hashes)
        if size < 0:
            raise ProofError(f"compact range size must be >= 0, got {size}")
        if len(hs) != size.bit_count():
            raise ProofError(
                f"compact range of size {size} needs {size.bit_count()} hashes, got {len(hs)}"
            )
        if any(len(h) != HASH_SIZE for h in hs):
            raise ProofError("compact range hashes must be 32 bytes each")
        self._size = size
        self._hashes = hs

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Perfect-subtree roots of the frontier, largest first."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return every perfect node it completed as (level, index, hash).

        The leaf itself is the first entry, at level 0; amortised O(1) hashes per call.
        """
        if len(leaf) != HASH_SIZE:
            raise ProofError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
        index = self._size
        h = leaf
        formed = [(0, index, h)]
        level = 0
        hashes = self._hashes
        while index & 1:
            h = node_hash(hashes.pop(), h)
            level += 1
            index >>= 1
            formed.append((level, index, h))
        hashes.append(h)
        self._size += 1
        return formed

    def append_many(self, leaves: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
        """Append leaf hashes in one pass; return the perfect nodes formed above the leaves.

        Same tree as calling ``append`` per leaf, computed level by level (levels >= 1 only).
        """
        n, k = self._size, len(leaves)
        if k == 0:
            return []
        old: dict[int, bytes] = {}
        i = 0
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                old[level] = self._hashes[i]
                i += 1
        total = n + k
        frontier: dict[int, bytes] = {}
        formed: list[tuple[int, int, bytes]] = []
        cur: Sequence[bytes] = leaves
        start, level = n, 0
        while cur:
            seq = [old[level], *cur] if start & 1 else list(cur)
            if len(seq) & 1:
                frontier[level] = seq[-1]
            nxt = node_level(seq)
            level += 1
            start >>= 1
            formed.extend((level, start + j, h) for j, h in enumerate(nxt))
            cur = nxt
        for lvl, h in old.items():
            if lvl >= level and total >> lvl & 1:
                frontier[lvl] = h
        self._hashes = [frontier[lvl] for lvl in range(total.bit_length() - 1, -1, -1) if total >> lvl & 1]
        self._size = total
        return formed

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes, discarding the completed nodes."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """Return the RFC 9162 root of the tree so far (EMPTY_ROOT when empty)."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        h = hashes[-1]
        for left in reversed(hashes[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> CompactRange:
        """Return an independent copy."""
        return CompactRange(self._size, self._hashes)

    def to_bytes(self) -> bytes:
        """Serialise as an 8-byte big-endian size followed by the frontier hashes."""
        return self._size.to_bytes(_SIZE_BYTES, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        """Parse the output of ``to_bytes``, checking its length against the size."""
        if len(data) < _SIZE_BYTES:
            raise ProofError("compact range bytes too short for the size header")
        size = int.from_bytes(data[:_SIZE_BYTES], "big")
        body = data[_SIZE_BYTES:]
        if len(body) != HASH_SIZE * size.bit_count():
            raise ProofError(
                f"compact range of size {size} needs {HASH_SIZE * size.bit_count()} hash bytes,"
                f" got {len(body)}"
            )
        return cls(size, (body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()[:16]}...)"


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """Return the RFC 9162 root over the given leaf hashes."""
    cr = CompactRange()
    cr.extend(hashes)
    return cr.root()


def _largest_power_of_two_below(n: int) -> int:
    """Largest power of two strictly less than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(start: int, end: int, get_node: NodeGetter) -> bytes:
    """Return MTH of leaves [start, end): a tree node, possibly ragged on the right.

    ``start`` must be a multiple of the largest power of two not above ``end - start``, as
    every node of an RFC 9162 tree is; the range is combined from its perfect parts.
    """
    n = end - start
    if start < 0 or n <= 0:
        raise ProofError(f"subtree [{start}, {end}) is empty or negative")
    top = n.bit_length() - 1
    if start % (1 << top):
        raise ProofError(f"subtree [{start}, {end}) is not aligned to a tree node")
    parts: list[bytes] = []
    pos = start
    for level in range(top, -1, -1):
        if n >> level & 1:
            parts.append(get_node(level, pos >> level))
            pos += 1 << level
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h


def inclusion_proof(index: int, size: int, get_node: NodeGetter) -> list[bytes]:
    """Return the RFC 9162 §2.1.3.1 inclusion proof of leaf ``index`` in a tree of ``size``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    return [subtree_hash(a, b, get_node) for a, b in reversed(ranges)]


def consistency_proof(size1: int, size2: int, get_node: NodeGetter) -> list[bytes]:
    """Return the RFC 9162 §2.1.4.1 consistency proof from ``size1`` to ``size2``."""
    if not 0 < size1 <= size2:
        raise ProofError(f"consistency needs 0 < size1 <= size2, got {size1} and {size2}")
    ranges: list[tuple[int, int]] = []
    lo, hi, complete = 0, size2, True
    while size1 != hi:
        k = _largest_power_of_two_below(hi - lo)
        if size1 - lo <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            complete = False
    if not complete:
        ranges.append((lo, hi))
    return [subtree_hash(a, b, get_node) for a, b in reversed(ranges)]


def _check_hashes(what: str, hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what}[{i}] is {len(h)} bytes, not {HASH_SIZE}")


def _inclusion_proof_length(index: int, size: int) -> int:
    """Expected RFC 9162 inclusion proof length for ``index`` in ``size`` (index < size)."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Return the root implied by an inclusion proof (RFC 9162 §2.1.3.2 steps 1-4)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
    want = _inclusion_proof_length(index, size)
    if len(proof) != want:
        raise ProofError(
            f"inclusion proof for index {index} in size {size} must have {want} hashes,"
            f" got {len(proof)}"
        )
    _check_hashes("proof", proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an RFC 9162 §2.1.3.2 inclusion proof; raise ProofError on any failure."""
    if len(root) != HASH_SIZE:
        raise ProofError(f"root is {len(root)} bytes, not {HASH_SIZE}")
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    if computed != root:
        raise ProofError(f"inclusion proof for index {index} in size {size} gives another root")


def _consistency_proof_length(size1: int, size2: int) -> int:
    """Expected RFC 9162 consistency proof length for 0 < size1 < size2."""
    shift = (size1 & -size1).bit_length() - 1
    inner = ((size1 - 1) ^ (size2 - 1)).bit_length() - shift
    border = ((size1 - 1) >> shift >> inner).bit_count()
    seed = 0 if size1 == 1 << shift else 1
    return seed + inner + border


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Check an RFC 9162 §2.1.4.2 consistency proof; raise ProofError on any failure."""
    if size1 <= 0:
        raise ProofError(f"consistency needs size1 > 0, got {size1}")
    if size2 < size1:
        raise ProofError(f"size2 {size2} is smaller than size1 {size1}")
    if size1 == size2:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if root1 != root2:
            raise ProofError(f"roots differ for the same size {size1}")
        return
    if len(root1) != HASH_SIZE or len(root2) != HASH_SIZE:
        raise ProofError(f"roots must be {HASH_SIZE} bytes, got {len(root1)} and {len(root2)}")
    want = _consistency_proof_length(size1, size2)
    if len(proof) != want:
        raise ProofError(
            f"consistency proof from {size1} to {size2} must have {want} hashes, got {len(proof)}"
        )
    _check_hashes("proof", proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    if fr != root1:
        raise ProofError(f"consistency proof does not reproduce the root of size {size1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not reproduce the root of size {size2}")
