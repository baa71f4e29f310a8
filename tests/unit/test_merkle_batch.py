"""List hashing (``merkle.leaf_hashes`` / ``node_level``): the C build and hashlib agree.

The C accelerator (domain/_sha256batch.c) is optional at install; both implementations are
tested wherever they exist, and a machine that can build the C one must have built it.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import merkle
from domain.verify_scan import scan_entries

IMPLEMENTATIONS = {"hashlib": (merkle._py_leaf_hashes, merkle._py_node_level)}
if merkle.NATIVE:
    from domain import _sha256batch

    IMPLEMENTATIONS["c"] = (_sha256batch.leaf_hashes, _sha256batch.node_level)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    return IMPLEMENTATIONS[request.param]


@settings(max_examples=200, deadline=None)
@given(datas=st.lists(st.binary(max_size=300), max_size=40))
def test_leaf_hashes_are_rfc9162_leaf_hashes(datas):
    expected = [merkle.leaf_hash(d) for d in datas]
    for leaf_hashes, _ in IMPLEMENTATIONS.values():
        assert leaf_hashes(datas) == expected


@settings(max_examples=200, deadline=None)
@given(hashes=st.lists(st.binary(min_size=32, max_size=32), max_size=41))
def test_node_level_hashes_each_pair_and_leaves_out_an_odd_last_hash(hashes):
    expected = [merkle.node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes) - 1, 2)]
    for _, node_level in IMPLEMENTATIONS.values():
        assert node_level(hashes) == expected


def test_a_large_entry_hashes_like_hashlib(impl):
    big = bytes(range(256)) * 4096  # 1 MiB: many SHA-256 blocks through one context
    assert impl[0]([big, b"", big]) == [merkle.leaf_hash(big), merkle.leaf_hash(b""), merkle.leaf_hash(big)]


@pytest.mark.parametrize("bad", ["text", bytearray(b"x"), memoryview(b"x"), None, 7])
def test_anything_but_bytes_is_refused_by_position(impl, bad):
    for fn in impl:
        with pytest.raises(TypeError, match=r"item 1 is \w+, not bytes"):
            fn([b"\x00" * 32, bad, b"\x00" * 32])


def test_anything_but_a_list_is_refused(impl):
    for fn in impl:
        with pytest.raises(TypeError, match="expected a list of bytes, got tuple"):
            fn((b"a", b"b"))


def test_the_c_build_is_present_where_a_compiler_and_openssl_headers_are():
    """`make install` builds it optionally; on a machine able to build it, it must be there."""
    include = Path(sysconfig.get_paths()["include"])
    can_build = (
        shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc") is not None
        and (include / "Python.h").exists()
        and Path("/usr/include/openssl/evp.h").exists()
    )
    assert merkle.NATIVE or not can_build, (
        "a C compiler, Python.h and OpenSSL headers are here but domain/_sha256batch was not "
        "built: run `make install` (pip install -e .) and read its warnings"
    )


def test_a_stored_entry_that_is_not_bytes_is_named_where_it_sits(tmp_path):
    """The chunk is hashed at once; a non-bytes entry falls back and is reported at its position."""
    from tests.factories import items, make_ledger, workload_events

    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=1000)
    ledger.append(items(workload_events(runs=2)))
    origin = ledger.config.origin
    datas: list = [data for _, data in ledger.store.raw_entries()]
    good = scan_entries(0, datas, origin, [])
    datas[5] = datas[5].decode()
    scan = scan_entries(0, datas, origin, [])
    assert scan.count == 5 and scan.error == (5, "stored entry is str, not bytes")
    assert good.error is None and good.count == len(datas)
    assert scan.nodes == scan_entries(0, datas[:5], origin, [5]).nodes
