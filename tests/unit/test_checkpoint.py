"""C2SP tlog checkpoints: text roundtrip, strict parsing and signed notes."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from domain.errors import CheckpointError, SignatureError, TachographError
from domain.note import NoteSigner

ROOT = bytes(range(32))
ROOT64 = base64.b64encode(ROOT).decode()
ORIGIN = "tachograph.example/log"
SPEC_EXAMPLE = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.from_seed(ORIGIN, bytes(range(32)))


def test_checkpoint_text_has_origin_size_and_root_lines() -> None:
    cp = Checkpoint(ORIGIN, 42, ROOT)
    assert cp.to_text() == f"{ORIGIN}\n42\n{ROOT64}\n"
    assert Checkpoint.parse(cp.to_text()) == cp


def test_the_spec_example_body_parses_and_roundtrips() -> None:
    cp = Checkpoint.parse(SPEC_EXAMPLE)
    assert cp.origin == "example.com/behind-the-sofa" and cp.size == 20852163
    assert cp.extensions == ()
    assert cp.to_text() == SPEC_EXAMPLE


def test_extension_lines_roundtrip() -> None:
    cp = Checkpoint(ORIGIN, 0, ROOT, ("ext one", "ext two"))
    assert cp.to_text().endswith("ext one\next two\n")
    assert Checkpoint.parse(cp.to_text()) == cp


@settings(max_examples=100, deadline=None)
@given(
    origin=st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f"), min_size=1),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f"), min_size=1),
        max_size=3,
    ),
)
def test_any_valid_checkpoint_roundtrips(
    origin: str, size: int, root: bytes, extensions: list[str]
) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.parse(cp.to_text()) == cp


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"{ORIGIN}\n42\n{ROOT64}", "end in a newline"),
        (f"{ORIGIN}\n42\n", "at least 3 lines"),
        (f"\n42\n{ROOT64}\n", "origin must be non-empty"),
        (f"{ORIGIN}\n042\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n00\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n-1\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n+1\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n 1\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n\u0661\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n{2**64}\n{ROOT64}\n", "outside"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n", "32 bytes"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT + b'x').decode()}\n", "32 bytes"),
        (f"{ORIGIN}\n42\n{ROOT64.rstrip('=')}\n", "not base64"),
        (f"{ORIGIN}\n42\n{ROOT64[:-2]}B=\n", "not canonical"),
        (f"{ORIGIN}\n42\n{ROOT64} \n", "not base64"),
        (f"{ORIGIN}\n42\n{ROOT64}\n\n", "extension line must be non-empty"),
        (f"{ORIGIN}\n42\n{ROOT64}\next\n\n", "extension line must be non-empty"),
        (f"{ORIGIN}\t\n42\n{ROOT64}\n", "control character"),
    ],
)
def test_a_malformed_checkpoint_is_rejected_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        Checkpoint.parse(text)


def test_checkpoint_error_is_a_tachograph_error() -> None:
    assert issubclass(CheckpointError, TachographError)


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [("", 1, ROOT), (ORIGIN, -1, ROOT), (ORIGIN, 1, ROOT[:-1]), ("a\nb", 1, ROOT)],
)
def test_an_invalid_checkpoint_cannot_be_built(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(origin, size, root)


def test_a_signed_checkpoint_opens_to_the_same_checkpoint(signer: NoteSigner) -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    note = sign_checkpoint(cp, signer)
    assert note.startswith(cp.to_text() + "\n— " + ORIGIN + " ")
    opened, names = open_checkpoint(note, [signer.verifier], origin=ORIGIN)
    assert opened == cp and names == [ORIGIN]


def test_a_checkpoint_from_another_origin_is_rejected(signer: NoteSigner) -> None:
    note = sign_checkpoint(Checkpoint("other.example/log", 7, ROOT), signer)
    with pytest.raises(CheckpointError, match="origin"):
        open_checkpoint(note, [signer.verifier], origin=ORIGIN)


def test_a_forged_checkpoint_is_rejected(signer: NoteSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), signer)
    with pytest.raises(SignatureError):
        open_checkpoint(note.replace("\n7\n", "\n8\n"), [signer.verifier])
    stranger = NoteSigner.from_seed(ORIGIN, bytes(32))
    with pytest.raises(SignatureError):
        open_checkpoint(note, [stranger.verifier])


def test_a_validly_signed_but_malformed_body_is_a_checkpoint_error(signer: NoteSigner) -> None:
    note = signer.sign(f"{ORIGIN}\n007\n{ROOT64}\n")
    with pytest.raises(CheckpointError, match="leading zeros"):
        open_checkpoint(note, [signer.verifier])
