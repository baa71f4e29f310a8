"""The witness protocol core: request bodies, responses, cosignature/v1 keys and signatures."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from domain.checkpoint import Checkpoint
from domain.errors import CheckpointError, ConfigError, SignatureError
from domain.note import NoteSigner, split_note
from domain.witness import (
    CosignatureVerifier,
    WitnessReport,
    add_checkpoint_body,
    check_witnesses,
    cosignature_line,
    cosigned_message,
    parse_cosignatures,
    parse_size_body,
    parse_witness,
    parse_witnesses,
    valid_cosignatures,
)

CP = Checkpoint("example.com/log", 20852163, bytes(range(32)))


def witness(name: str = "witness.example/w1", seed: int = 1) -> tuple[Ed25519PrivateKey, CosignatureVerifier]:
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return key, CosignatureVerifier(name, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def test_the_cosigned_message_is_the_header_the_time_line_and_the_whole_checkpoint_body():
    assert cosigned_message(CP.to_text(), 1679315147) == (
        b"cosignature/v1\ntime 1679315147\nexample.com/log\n20852163\n"
        + base64.b64encode(bytes(range(32)))
        + b"\n"
    )


def test_a_witness_key_id_uses_algorithm_byte_4_and_its_vkey_round_trips():
    _, v = witness()
    expected = hashlib.sha256(b"witness.example/w1\n\x04" + v.public_key).digest()[:4]
    assert v.key_id == expected
    assert v.vkey.startswith(f"witness.example/w1+{expected.hex()}+")
    assert base64.b64decode(v.vkey.rsplit("+", 1)[1])[0] == 4
    assert CosignatureVerifier.from_vkey(v.vkey).public_key == v.public_key


def test_a_log_key_is_not_accepted_as_a_witness_key():
    log = NoteSigner.from_seed("example.com/log", b"\x07" * 32)
    with pytest.raises(SignatureError, match="0x04"):
        CosignatureVerifier.from_vkey(log.vkey)


def test_a_cosignature_verifies_with_its_witness_key_and_yields_its_timestamp():
    key, v = witness()
    line = cosignature_line(CP.to_text(), v.name, key, 1_700_000_000)
    [sig] = parse_cosignatures(line.encode())
    assert v.verify(CP.to_text(), sig) == 1_700_000_000


def test_a_cosignature_over_another_checkpoint_or_by_another_key_does_not_verify():
    key, v = witness()
    _, other = witness(seed=2)
    line = cosignature_line(CP.to_text(), v.name, key, 1)
    [sig] = parse_cosignatures(line.encode())
    grown = Checkpoint(CP.origin, CP.size + 1, CP.root_hash).to_text()
    assert v.verify(grown, sig) is None
    assert other.verify(CP.to_text(), sig) is None  # same name, another key: another key id


def test_a_cosignature_with_a_flipped_timestamp_does_not_verify():
    key, v = witness()
    line = cosignature_line(CP.to_text(), v.name, key, 1000)
    name, b64 = line[2:].rstrip("\n").split(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[4 + 7] ^= 1  # the timestamp's last byte
    [sig] = parse_cosignatures(f"— {name} {base64.b64encode(bytes(raw)).decode()}\n".encode())
    assert v.verify(CP.to_text(), sig) is None


def test_valid_cosignatures_keep_the_newest_per_witness_and_ignore_unknown_keys():
    k1, w1 = witness("w1.example", 1)
    k2, w2 = witness("w2.example", 2)
    k3, _ = witness("w3.example", 3)
    text = CP.to_text()
    body = (
        cosignature_line(text, w1.name, k1, 10)
        + cosignature_line(text, w1.name, k1, 20)
        + cosignature_line(text, w2.name, k2, 5)
        + cosignature_line(text, "w3.example", k3, 7)
    )
    found = {c.witness: c.timestamp for c in valid_cosignatures(text, parse_cosignatures(body.encode()), [w1, w2])}
    assert found == {w1.ident: 20, w2.ident: 5}


def test_the_request_body_is_old_size_proof_lines_a_blank_line_and_the_note():
    note = NoteSigner.from_seed(CP.origin, b"\x01" * 32).sign(CP.to_text())
    body = add_checkpoint_body(5, [b"\x00" * 32, b"\xff" * 32], note)
    assert body == (
        b"old 5\n" + base64.b64encode(b"\x00" * 32) + b"\n" + base64.b64encode(b"\xff" * 32)
        + b"\n\n" + note.encode()
    )
    assert add_checkpoint_body(0, [], note) == b"old 0\n\n" + note.encode()


def test_the_request_body_refuses_a_proof_from_size_zero_and_over_63_hashes():
    with pytest.raises(CheckpointError, match="empty"):
        add_checkpoint_body(0, [b"\x00" * 32], "n\n")
    with pytest.raises(CheckpointError, match="63"):
        add_checkpoint_body(1, [b"\x00" * 32] * 64, "n\n")


@pytest.mark.parametrize("body", [b"12", b"012\n", b"-1\n", b"1 2\n", b"", b"9" * 30 + b"\n"])
def test_a_malformed_conflict_size_is_refused(body):
    with pytest.raises(CheckpointError, match="malformed tree size"):
        parse_size_body(body)


def test_a_conflict_size_is_read():
    assert parse_size_body(b"677799\n") == 677799


@pytest.mark.parametrize(
    "body", [b"not a signature\n", b"\xe2\x80\x94 w AAAA", b"\xff\xfe\n", b"\xe2\x80\x94 w " + b"A" * 70_000 + b"\n"]
)
def test_a_malformed_response_is_refused(body):
    with pytest.raises(SignatureError):
        parse_cosignatures(body)


def test_witness_specs_parse_as_vkey_or_url_equals_vkey():
    _, v = witness()
    offline = parse_witness(v.vkey)
    assert offline.url is None and offline.verifier.vkey == v.vkey
    online = parse_witness("http://127.0.0.1:7380/=" + v.vkey)
    assert online.url == "http://127.0.0.1:7380" and online.verifier.vkey == v.vkey
    assert [w.verifier.vkey for w in parse_witnesses(f" {v.vkey} ,, ")] == [v.vkey]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ftp://host=KEY", "http:// or https://"),
        ("http://host", "URL=VKEY"),
        ("http://host=not+a+key", "witness key"),
    ],
)
def test_bad_witness_specs_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_witness(spec)


def test_a_witness_listed_twice_is_refused():
    _, v = witness()
    with pytest.raises(ConfigError, match="twice"):
        parse_witnesses(f"{v.vkey},http://h={v.vkey}")


def test_the_verdict_fails_on_a_rollback_whatever_the_threshold():
    reports = [
        WitnessReport("a", cosigned=True),
        WitnessReport("b", problem="rollback", reason="holds size 9 but the ledger only 5"),
    ]
    verdict = check_witnesses(CP, reports, threshold=1)
    assert not verdict.ok and "holds size 9" in (verdict.reason or "")


def test_the_verdict_needs_threshold_cosignatures():
    reports = [WitnessReport("a", cosigned=True), WitnessReport("b", problem="missing", reason="none stored")]
    assert check_witnesses(CP, reports, threshold=1).ok
    verdict = check_witnesses(CP, reports, threshold=2)
    assert not verdict.ok and "only 1 of the 2" in (verdict.reason or "") and "b: none stored" in (verdict.reason or "")


def test_split_note_accepts_a_note_carrying_log_and_witness_signatures():
    key, v = witness()
    log = NoteSigner.from_seed(CP.origin, b"\x01" * 32)
    note = log.sign(CP.to_text()) + cosignature_line(CP.to_text(), v.name, key, 5)
    text, sigs = split_note(note)
    assert text == CP.to_text() and len(sigs) == 2
