"""Universal properties of the Merkle maths: every generated proof verifies, any bit flip fails."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import ProofError
from domain.merkle import (
    EMPTY_ROOT,
    CompactRange,
    NodeGetter,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

MAX = 300
LEAVES = [leaf_hash(f"event {i}".encode()) for i in range(MAX)]


def _reference_root(hashes: list[bytes]) -> bytes:
    """MTH straight from the RFC 9162 §2.1.1 recursive definition."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(_reference_root(hashes[:k]), _reference_root(hashes[k:]))


def _build() -> tuple[dict[tuple[int, int], bytes], list[bytes]]:
    nodes: dict[tuple[int, int], bytes] = {}
    roots: list[bytes] = []
    cr = CompactRange()
    for leaf in LEAVES:
        for level, index, h in cr.append(leaf):
            assert (level, index) not in nodes
            nodes[(level, index)] = h
        roots.append(cr.root())
    return nodes, roots


NODES, ROOTS = _build()


def root_of(size: int) -> bytes:
    return ROOTS[size - 1] if size else EMPTY_ROOT


class CountingGetter:
    """A node getter over NODES that refuses nodes outside ``size`` and counts calls."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0

    def __call__(self, level: int, index: int) -> bytes:
        assert (index + 1) << level <= self.size, (level, index, self.size)
        self.calls += 1
        return NODES[(level, index)]


def _log_bound(size: int) -> int:
    return 2 * max(1, math.ceil(math.log2(size + 1))) + 2


def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_every_compact_range_prefix_has_the_rfc_root() -> None:
    for n in range(MAX + 1):
        want = _reference_root(LEAVES[:n])
        assert root_of(n) == want
        assert root_from_leaf_hashes(LEAVES[:n]) == want


def test_completed_nodes_are_the_perfect_subtree_hashes() -> None:
    for (level, index), h in NODES.items():
        lo = index << level
        assert h == _reference_root(LEAVES[lo : lo + (1 << level)])


def test_append_reports_the_leaf_first_and_one_node_per_trailing_one_bit() -> None:
    cr = CompactRange()
    for i, leaf in enumerate(LEAVES[:64]):
        formed = cr.append(leaf)
        assert formed[0] == (0, i, leaf)
        assert len(formed) == 1 + ((i + 1) & -(i + 1)).bit_length() - 1


def test_compact_range_survives_serialisation_and_copy() -> None:
    cr = CompactRange()
    for n, leaf in enumerate(LEAVES[:70]):
        restored = CompactRange.from_bytes(cr.to_bytes())
        assert restored == cr and restored.size == n and restored.root() == cr.root()
        assert CompactRange(cr.size, cr.hashes) == cr
        clone = cr.copy()
        cr.append(leaf)
        assert clone.size == n and clone != cr


def test_compact_range_bytes_with_the_wrong_length_are_refused() -> None:
    data = CompactRange(3, [LEAVES[0], LEAVES[1]]).to_bytes()
    for bad in (data[:-1], data + b"\0", data[:7]):
        with pytest.raises(ProofError):
            CompactRange.from_bytes(bad)
    with pytest.raises(ProofError):
        CompactRange(3, [LEAVES[0]])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, MAX))
def test_every_inclusion_proof_verifies_for_every_index(size: int) -> None:
    root = root_from_leaf_hashes(LEAVES[:size])
    for index in range(size):
        get = CountingGetter(size)
        proof = inclusion_proof(index, size, get)
        assert get.calls <= _log_bound(size)
        verify_inclusion(LEAVES[index], index, size, proof, root)
        assert root_from_inclusion_proof(LEAVES[index], index, size, proof) == root


def test_every_inclusion_proof_verifies_exhaustively_up_to_the_maximum_size() -> None:
    for size in range(1, MAX + 1):
        for index in range(size):
            proof = inclusion_proof(index, size, CountingGetter(size))
            verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size - 1])


def test_every_consistency_proof_verifies_for_all_size_pairs() -> None:
    for n in range(1, MAX + 1):
        for m in range(1, n + 1):
            get = CountingGetter(n)
            proof = consistency_proof(m, n, get)
            assert get.calls <= _log_bound(n)
            verify_consistency(m, n, ROOTS[m - 1], ROOTS[n - 1], proof)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_single_bit_flip_in_an_inclusion_proof_or_root_is_rejected(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX))
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, CountingGetter(size))
    root = ROOTS[size - 1]
    target = data.draw(st.integers(0, len(proof)))  # len(proof) means the root
    bit = data.draw(st.integers(0, 255))
    if target == len(proof):
        root = _flip(root, bit)
    else:
        proof[target] = _flip(proof[target], bit)
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[index], index, size, proof, root)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_single_bit_flip_in_a_consistency_proof_or_root_is_rejected(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, MAX))
    m = data.draw(st.integers(1, n - 1))
    proof = consistency_proof(m, n, CountingGetter(n))
    roots = [ROOTS[m - 1], ROOTS[n - 1]]
    target = data.draw(st.integers(0, len(proof) + 1))  # the last two mean root1, root2
    bit = data.draw(st.integers(0, 255))
    if target >= len(proof):
        roots[target - len(proof)] = _flip(roots[target - len(proof)], bit)
    else:
        proof[target] = _flip(proof[target], bit)
    with pytest.raises(ProofError):
        verify_consistency(m, n, roots[0], roots[1], proof)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_wrong_index_or_size_or_proof_length_is_rejected(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, MAX))
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, CountingGetter(size))
    root = ROOTS[size - 1]
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[index], other, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[index], index, size, [*proof, proof[0] if proof else root], root)
    if proof:
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, size, proof[:-1], root)


def test_out_of_range_proof_requests_are_refused() -> None:
    get: NodeGetter = CountingGetter(8)
    for index, size in ((8, 8), (-1, 8), (0, 0)):
        with pytest.raises(ProofError):
            inclusion_proof(index, size, get)
    for m, n in ((0, 8), (9, 8), (-1, 3)):
        with pytest.raises(ProofError):
            consistency_proof(m, n, get)
    assert consistency_proof(5, 5, get) == []


def test_subtree_hash_refuses_ranges_that_are_not_tree_nodes() -> None:
    get = CountingGetter(MAX)
    assert subtree_hash(4, 7, get) == _reference_root(LEAVES[4:7])
    for start, end in ((3, 7), (5, 5), (2, 1)):
        with pytest.raises(ProofError):
            subtree_hash(start, end, get)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 300), k=st.integers(0, 300))
def test_appending_many_leaves_at_once_equals_appending_them_one_by_one(n: int, k: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n + k)]
    one = CompactRange()
    batch = CompactRange()
    for leaf in leaves[:n]:
        one.append(leaf)
        batch.append(leaf)
    expected = [node for leaf in leaves[n:] for node in one.append(leaf) if node[0] > 0]
    assert sorted(batch.append_many(leaves[n:])) == sorted(expected)
    assert batch == one and batch.root() == one.root()
