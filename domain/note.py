"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, as golang.org/x/mod/sumdb/note."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from domain.errors import SignatureError

ALG_ED25519 = 0x01
KEY_ID_SIZE = 4
MAX_SIGNATURES = 100
SIG_PREFIX = "— "
_PRIVATE_PREFIX = "PRIVATE+KEY+"


def is_valid_key_name(name: str) -> bool:
    """Return whether ``name`` is a valid key name: non-empty, no spaces, no '+'."""
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() or c < " " for c in name)
        and _is_utf8(name)
    )


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    """Return the 4-byte key ID: SHA-256(name || 0x0A || alg || public key)[:4]."""
    data = name.encode("utf-8") + b"\n" + bytes([alg]) + public_key
    return hashlib.sha256(data).digest()[:KEY_ID_SIZE]


def parse_vkey(vkey: str, alg: int, what: str = "verifier key") -> tuple[str, bytes]:
    """Parse ``<name>+<8 hex key ID>+<base64(alg || 32-byte key)>``; return (name, public key)."""
    name, sep1, rest = vkey.partition("+")
    id_hex, sep2, key64 = rest.partition("+")
    if not (sep1 and sep2):
        raise SignatureError(f"malformed {what}: want <name>+<keyid>+<key>")
    _check_name(name)
    expected_id = _parse_key_id(id_hex, what)
    raw = _b64decode_strict(key64, what)
    if len(raw) != 33 or raw[0] != alg:
        raise SignatureError(f"{what} is not an Ed25519 (0x{alg:02x} + 32 bytes) key")
    if key_id(name, raw[1:], alg) != expected_id:
        raise SignatureError(f"{what} ID {id_hex} does not match its key")
    return name, raw[1:]


def _b64decode_strict(s: str, what: str) -> bytes:
    """Decode standard base64, rejecting junk and non-canonical encodings."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise SignatureError(f"bad base64 in {what}") from e
    if base64.b64encode(raw).decode("ascii") != s:
        raise SignatureError(f"bad base64 in {what}: not canonical")
    return raw


def _check_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise SignatureError(f"invalid key name {name!r}: must be non-empty, no spaces, no '+'")


def _check_text(text: str, what: str = "note text") -> None:
    """Reject text that is not UTF-8 or holds ASCII control characters other than newline."""
    if not _is_utf8(text):
        raise SignatureError(f"{what} is not valid UTF-8")
    for i, c in enumerate(text):
        if c < " " and c != "\n":
            raise SignatureError(f"{what} contains control character U+{ord(c):04X} at {i}")


class NoteVerifier:
    """An Ed25519 note verifier for one (name, key ID, public key)."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        if len(public_key) != 32:
            raise SignatureError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
        self.name = name
        self.public_key = bytes(public_key)
        self.key_id = key_id(name, self.public_key)
        self._key = Ed25519PublicKey.from_public_bytes(self.public_key)

    def __reduce__(self) -> tuple[type[NoteVerifier], tuple[str, bytes]]:
        # the key object does not pickle: a verification state crossing a process is rebuilt from this
        return (NoteVerifier, (self.name, self.public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key ``<name>+<8 hex key ID>+<base64(0x01 || public key)>``."""
        return cls(*parse_vkey(vkey, ALG_ED25519))

    @property
    def vkey(self) -> str:
        """Return the verifier key string."""
        key64 = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{key64}"

    def verify(self, text: str | bytes, sig: bytes) -> bool:
        """Return whether ``sig`` is this key's Ed25519 signature over ``text``."""
        msg = text.encode("utf-8") if isinstance(text, str) else text
        try:
            self._key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"NoteVerifier({self.vkey!r})"


def _parse_key_id(id_hex: str, what: str) -> bytes:
    if len(id_hex) != 2 * KEY_ID_SIZE or any(c not in "0123456789abcdef" for c in id_hex):
        raise SignatureError(f"malformed key ID {id_hex!r} in {what}: want 8 lowercase hex digits")
    return bytes.fromhex(id_hex)


class NoteSigner:
    """An Ed25519 note signer; ``.verifier`` is its public half."""

    __slots__ = ("_key", "_seed", "name", "verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._key = private_key
        self._seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = NoteVerifier(name, public)

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> NoteSigner:
        """Build a signer from a 32-byte Ed25519 seed (the injected randomness)."""
        if len(seed) != 32:
            raise SignatureError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """Make a new signer with a fresh key from the OS random source."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 || seed)>``."""
        if not skey.startswith(_PRIVATE_PREFIX):
            raise SignatureError("malformed signer key: missing PRIVATE+KEY+ prefix")
        name, sep1, rest = skey[len(_PRIVATE_PREFIX) :].partition("+")
        id_hex, sep2, key64 = rest.partition("+")
        if not (sep1 and sep2):
            raise SignatureError("malformed signer key: want PRIVATE+KEY+<name>+<keyid>+<key>")
        _check_name(name)
        expected_id = _parse_key_id(id_hex, "signer key")
        raw = _b64decode_strict(key64, "signer key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise SignatureError("signer key is not an Ed25519 (0x01 + 32-byte seed) key")
        signer = cls.from_seed(name, raw[1:])
        if signer.key_id != expected_id:
            raise SignatureError(f"signer key ID {id_hex} does not match its key")
        return signer

    @property
    def key_id(self) -> bytes:
        """Return the 4-byte key ID."""
        return self.verifier.key_id

    @property
    def vkey(self) -> str:
        """Return the verifier key string for this signer."""
        return self.verifier.vkey

    @property
    def skey(self) -> str:
        """Return the private key string (secret: never log it)."""
        key64 = base64.b64encode(bytes([ALG_ED25519]) + self._seed).decode("ascii")
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id.hex()}+{key64}"

    def sign_bytes(self, msg: bytes) -> bytes:
        """Return the raw 64-byte Ed25519 signature over ``msg``."""
        return self._key.sign(msg)

    def signature_line(self, text: str) -> str:
        """Return the signature line ``— <name> <base64(keyid || sig)>\\n`` for ``text``."""
        _check_note_text(text)
        blob = self.key_id + self.sign_bytes(text.encode("utf-8"))
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"

    def sign(self, text: str) -> str:
        """Return a full signed note: ``text``, a blank line, and this key's signature line."""
        return text + "\n" + self.signature_line(text)

    def __repr__(self) -> str:
        return f"NoteSigner({self.vkey!r})"


def _check_note_text(text: str) -> None:
    if not text.endswith("\n"):
        raise SignatureError("note text must end in a newline")
    _check_text(text)


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line: key name, key ID, raw signature and the line itself."""

    name: str
    key_id: bytes
    signature: bytes
    line: str


@dataclass(frozen=True)
class OpenedNote:
    """A note whose signatures were checked: its text and who vouched for it."""

    text: str
    verified_by: list[str]
    unverified_count: int


def split_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Parse a signed note into its text and signature lines, checking only its form."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SignatureError("note is not valid UTF-8") from e
    _check_text(note, "note")
    split = note.rfind("\n\n")
    if split < 0:
        raise SignatureError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise SignatureError("note has no signature lines")
    if not block.endswith("\n"):
        raise SignatureError("note's signature block does not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise SignatureError(f"note has more than {MAX_SIGNATURES} signatures")
    sigs: list[NoteSignature] = []
    for n, line in enumerate(lines, 1):
        if not line.startswith(SIG_PREFIX):
            raise SignatureError(f"signature line {n} does not start with '— '")
        name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or not b64:
            raise SignatureError(f"signature line {n} has no signature after the key name")
        if not is_valid_key_name(name):
            raise SignatureError(f"signature line {n} has an invalid key name {name!r}")
        raw = _b64decode_strict(b64, f"signature line {n}")
        if len(raw) <= KEY_ID_SIZE:
            raise SignatureError(f"signature line {n} is too short to hold a key ID and signature")
        sigs.append(NoteSignature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:], line))
    return text, sigs


def open_note(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> OpenedNote:
    """Check a signed note against trusted verifiers; raise SignatureError unless one signed it.

    Signatures from unknown keys are ignored (counted); a known key whose signature does
    not verify rejects the whole note.
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        prior = known.setdefault((v.name, v.key_id), v)
        if prior.public_key != v.public_key:
            raise SignatureError(f"ambiguous verifiers for key {v.name}+{v.key_id.hex()}")
    text, sigs = split_note(note)
    msg = text.encode("utf-8")
    verified_by: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    unknown: set[str] = set()
    for sig in sigs:
        ident = (sig.name, sig.key_id)
        verifier = known.get(ident)
        if verifier is None:
            unknown.add(sig.line)
            continue
        if ident in seen:
            continue
        seen.add(ident)
        if not verifier.verify(msg, sig.signature):
            raise SignatureError(f"bad signature from key {sig.name}+{sig.key_id.hex()}")
        verified_by.append(sig.name)
    if not verified_by:
        keys = ", ".join(sorted({f"{s.name}+{s.key_id.hex()}" for s in sigs}))
        raise SignatureError(f"note has no signature from a trusted key (unknown key: {keys})")
    return OpenedNote(text=text, verified_by=verified_by, unverified_count=len(unknown))


def add_signature(note: str, signer: NoteSigner) -> str:
    """Return ``note`` cosigned by ``signer``, replacing any earlier signature by the same key.

    Only the note's form is checked here: open it with trusted verifiers before cosigning.
    """
    text, sigs = split_note(note)
    kept = [s.line + "\n" for s in sigs if (s.name, s.key_id) != (signer.name, signer.key_id)]
    return text + "\n" + "".join(kept) + signer.signature_line(text)
