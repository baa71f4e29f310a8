"""RFC 9162 proof verification against the transparency-dev/merkle test vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from domain.errors import ProofError
from domain.merkle import verify_consistency, verify_inclusion

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "vectors" / "rfc9162"
EXPECTED_CASES = 196
SHARED_CANDIDATES = (Path("/work/shared/vectors/rfc9162"), REPO.parent / "shared/vectors/rfc9162")

INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b64(p) for p in case.get("proof") or []]


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    return case


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_every_vector_file_is_collected() -> None:
    assert len(INCLUSION) + len(CONSISTENCY) == EXPECTED_CASES
    assert len(list(VECTORS.rglob("*.json"))) == EXPECTED_CASES


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector_is_accepted_or_rejected_as_expected(path: Path) -> None:
    case = _load(path)

    def run() -> None:
        verify_inclusion(
            _b64(case["leafHash"]),
            case["leafIdx"],
            case["treeSize"],
            _proof(case),
            _b64(case["root"]),
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            run()
    else:
        run()


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector_is_accepted_or_rejected_as_expected(path: Path) -> None:
    case = _load(path)

    def run() -> None:
        verify_consistency(
            case["size1"], case["size2"], _b64(case["root1"]), _b64(case["root2"]), _proof(case)
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            run()
    else:
        run()


def test_the_parametrisation_holds_exactly_the_expected_number_of_cases() -> None:
    # the two vector tests above are parametrised over these lists: none is silently missing
    assert len(INCLUSION) + len(CONSISTENCY) == EXPECTED_CASES
    assert len({*INCLUSION, *CONSISTENCY}) == EXPECTED_CASES


def test_repo_vectors_equal_the_shared_copy_byte_for_byte() -> None:
    ours = {p.relative_to(VECTORS): p.read_bytes() for p in VECTORS.rglob("*") if p.is_file()}
    assert sum(1 for rel in ours if rel.suffix == ".json") == EXPECTED_CASES
    for shared in {c.resolve() for c in SHARED_CANDIDATES if c.is_dir()}:
        theirs = {p.relative_to(shared): p.read_bytes() for p in shared.rglob("*") if p.is_file()}
        assert ours.keys() == theirs.keys(), shared
        for rel, data in ours.items():
            assert data == theirs[rel], (shared, rel)
