"""C2SP signed notes: format, key strings, verification and tamper detection."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import SignatureError
from domain.note import (
    NoteSigner,
    NoteVerifier,
    add_signature,
    is_valid_key_name,
    key_id,
    open_note,
    split_note,
)

# The reference key and note of golang.org/x/mod/sumdb/note (note_test.go).
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

SEED = bytes(range(32))
TEXT = "tachograph.example/log\n42\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.from_seed("tachograph.example/log", SEED)


def test_the_go_reference_note_opens_with_the_go_verifier_key() -> None:
    opened = open_note(GO_NOTE, [NoteVerifier.from_vkey(GO_VKEY)])
    assert opened.text == GO_TEXT
    assert opened.verified_by == ["PeterNeumann"]
    assert opened.unverified_count == 0


def test_signing_with_the_go_reference_key_reproduces_its_note_byte_for_byte() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    assert signer.vkey == GO_VKEY
    assert signer.skey == GO_SKEY
    assert signer.sign(GO_TEXT) == GO_NOTE


def test_a_fixed_seed_gives_a_well_formed_vkey_that_parses_back_to_the_same_key(
    signer: NoteSigner,
) -> None:
    name, id_hex, key64 = signer.vkey.split("+", 2)
    raw = base64.b64decode(key64)
    assert name == "tachograph.example/log"
    assert raw[0] == 0x01 and len(raw) == 33
    expected_id = hashlib.sha256(name.encode() + b"\n\x01" + raw[1:]).digest()[:4]
    assert id_hex == expected_id.hex() == signer.key_id.hex()
    assert signer.key_id == key_id(name, raw[1:])
    parsed = NoteVerifier.from_vkey(signer.vkey)
    assert parsed.public_key == raw[1:] == signer.verifier.public_key
    assert parsed.vkey == signer.vkey
    again = NoteSigner.from_skey(signer.skey)
    assert again.vkey == signer.vkey and again.skey == signer.skey
    assert signer.skey.startswith("PRIVATE+KEY+tachograph.example/log+" + id_hex + "+")


def test_sign_then_open_returns_the_text_and_the_signer(signer: NoteSigner) -> None:
    note = signer.sign(TEXT)
    assert note.startswith(TEXT + "\n— tachograph.example/log ")
    opened = open_note(note, [signer.verifier])
    assert opened.text == TEXT and opened.verified_by == [signer.name]
    assert open_note(note.encode(), [signer.verifier]).text == TEXT


def test_sign_bytes_is_a_plain_ed25519_signature(signer: NoteSigner) -> None:
    sig = signer.sign_bytes(b"hello")
    assert len(sig) == 64
    assert signer.verifier.verify(b"hello", sig)
    assert not signer.verifier.verify(b"hellp", sig)


def test_a_note_signed_only_by_an_untrusted_key_is_rejected(signer: NoteSigner) -> None:
    stranger = NoteSigner.from_seed("tachograph.example/log", bytes(32))
    with pytest.raises(SignatureError, match="no signature from a trusted key"):
        open_note(stranger.sign(TEXT), [signer.verifier])


def test_a_known_key_with_a_bad_signature_rejects_the_whole_note(signer: NoteSigner) -> None:
    note = signer.sign(TEXT)
    forged = note.replace("42", "43", 1)
    with pytest.raises(SignatureError, match="bad signature"):
        open_note(forged, [signer.verifier])


def test_unknown_signatures_are_ignored_when_a_trusted_one_verifies(signer: NoteSigner) -> None:
    witness = NoteSigner.from_seed("witness.example", bytes(32))
    note = add_signature(witness.sign(TEXT), signer)
    opened = open_note(note, [signer.verifier])
    assert opened.verified_by == [signer.name]
    assert opened.unverified_count == 1
    both = open_note(note, [signer.verifier, witness.verifier])
    assert sorted(both.verified_by) == sorted([signer.name, witness.name])


def test_cosigning_twice_with_the_same_key_keeps_one_signature(signer: NoteSigner) -> None:
    note = add_signature(signer.sign(TEXT), signer)
    _, sigs = split_note(note)
    assert len(sigs) == 1


def test_an_unverifiable_signer_name_is_refused() -> None:
    for name in ("", "has space", "plus+sign", "tab\tname", "nbsp\u00a0name"):
        assert not is_valid_key_name(name)
        with pytest.raises(SignatureError):
            NoteSigner.from_seed(name, SEED)
    assert is_valid_key_name("example.com/log42")


def test_text_without_a_final_newline_cannot_be_signed(signer: NoteSigner) -> None:
    with pytest.raises(SignatureError, match="newline"):
        signer.sign("no newline")
    with pytest.raises(SignatureError, match="control character"):
        signer.sign("bell\a\n")


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda n: n.replace("\n\n", "\n"), "no blank line"),
        (lambda n: n.rstrip("\n"), "does not end in a newline"),
        (lambda n: n.replace("\n\n", "\n\r\n"), "control character"),
        (lambda n: n.replace("\n\n", "\n\n\t"), "control character"),
        (lambda n: n.replace("— ", "- "), "does not start with"),
        (lambda n: n.replace("=\n", "*\n"), "bad base64"),
        (lambda n: n.replace("log ", "log", 1), "no signature after"),
        (lambda n: n + "\n", "no signature lines"),
        (lambda n: n + "junk\n", "does not start with"),
        (lambda n: n.replace("— tachograph.example/log", "— bad+name"), "invalid key name"),
        (lambda n: n[: n.index("\n\n") + 2], "no signature lines"),
    ],
)
def test_a_malformed_note_is_rejected_with_a_named_reason(
    signer: NoteSigner, mangle: Callable[[str], str], reason: str
) -> None:
    note = mangle(signer.sign(TEXT))
    with pytest.raises(SignatureError, match=reason):
        open_note(note, [signer.verifier])


def test_invalid_utf8_is_rejected(signer: NoteSigner) -> None:
    note = signer.sign(TEXT).encode()
    with pytest.raises(SignatureError, match="UTF-8"):
        open_note(note.replace(b"42", b"\xff\xfe"), [signer.verifier])


def test_a_short_signature_is_rejected(signer: NoteSigner) -> None:
    note = TEXT + "\n— tachograph.example/log " + base64.b64encode(b"abcd").decode() + "\n"
    with pytest.raises(SignatureError, match="too short"):
        open_note(note, [signer.verifier])


def test_too_many_signatures_are_rejected(signer: NoteSigner) -> None:
    line = signer.sign(TEXT)[len(TEXT) + 1 :]
    with pytest.raises(SignatureError, match="more than 100"):
        open_note(TEXT + "\n" + line * 101, [signer.verifier])


@pytest.mark.parametrize(
    "vkey",
    [
        GO_VKEY.replace("c74f20a3", "c74f20a4"),
        GO_VKEY.replace("c74f20a3", "C74F20A3"),
        GO_VKEY.replace("+ARpc", "+AhRpc"),
        GO_VKEY.replace("+ARpc", "+Apc"),
        GO_VKEY[:-1],
        GO_VKEY + "=",
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_a_mangled_verifier_key_is_refused(vkey: str) -> None:
    with pytest.raises(SignatureError):
        NoteVerifier.from_vkey(vkey)


@pytest.mark.parametrize(
    "skey",
    [
        GO_SKEY.replace("PRIVATE+KEY+", "PRIVATE+"),
        GO_SKEY.replace("c74f20a3", "00000000"),
        GO_SKEY[:-2],
        "PRIVATE+KEY+PeterNeumann",
    ],
)
def test_a_mangled_signer_key_is_refused(skey: str) -> None:
    with pytest.raises(SignatureError):
        NoteSigner.from_skey(skey)


def test_two_different_verifiers_for_the_same_name_and_id_are_ambiguous() -> None:
    real = NoteVerifier.from_vkey(GO_VKEY)
    fake = NoteVerifier("PeterNeumann", bytes(32))
    object.__setattr__(fake, "key_id", real.key_id)
    with pytest.raises(SignatureError, match="ambiguous"):
        open_note(GO_NOTE, [real, fake])


_SIGNED = NoteSigner.from_seed("tachograph.example/log", SEED).sign(TEXT).encode()
_VERIFIER = NoteSigner.from_seed("tachograph.example/log", SEED).verifier


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_SIGNED) - 1), st.integers(1, 255))
def test_any_byte_flip_of_a_signed_note_is_rejected(position: int, mask: int) -> None:
    tampered = bytearray(_SIGNED)
    tampered[position] ^= mask
    with pytest.raises(SignatureError):
        open_note(bytes(tampered), [_VERIFIER])


def test_every_single_byte_increment_of_the_go_note_is_rejected() -> None:
    raw = GO_NOTE.encode()
    verifier = NoteVerifier.from_vkey(GO_VKEY)
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] = (tampered[i] + 1) % 256
        with pytest.raises(SignatureError):
            open_note(bytes(tampered), [verifier])
