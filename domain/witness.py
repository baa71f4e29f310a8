"""Witness protocol (c2sp.org/tlog-witness) and Ed25519 cosignatures (c2sp.org/tlog-cosignature).

Pure: builds ``add-checkpoint`` request bodies, parses responses, and checks ``cosignature/v1``
signatures; the HTTP exchange lives outside ``domain/``.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from domain.checkpoint import Checkpoint
from domain.errors import CheckpointError, ConfigError, SignatureError
from domain.note import KEY_ID_SIZE, SIG_PREFIX, NoteSignature, key_id, parse_vkey, split_note

ALG_COSIGNATURE_V1 = 0x04
MAX_PROOF_LINES = 63
MAX_RESPONSE_BYTES = 64 * 1024
MAX_TIMESTAMP = (1 << 63) - 1
_SIZE_RE = re.compile(rb"(?:0|[1-9][0-9]{0,19})\n\Z")


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The bytes a witness signs: ``cosignature/v1``, ``time <t>``, then the checkpoint body."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise SignatureError(f"cosignature timestamp {timestamp} is outside 0..2**63-1")
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode()


class CosignatureVerifier:
    """A witness's Ed25519 cosignature/v1 key: name, key ID (alg 0x04) and public key."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        self.name = name
        self.public_key = bytes(public_key)
        self.key_id = key_id(name, self.public_key, ALG_COSIGNATURE_V1)
        self._key = Ed25519PublicKey.from_public_bytes(self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parse ``<name>+<8 hex key ID>+<base64(0x04 || 32-byte key)>``."""
        return cls(*parse_vkey(vkey, ALG_COSIGNATURE_V1, "witness key"))

    @property
    def vkey(self) -> str:
        """The witness verifier key string."""
        key64 = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{key64}"

    @property
    def ident(self) -> str:
        """``<name>+<key ID>``: how stored cosignatures name their witness."""
        return f"{self.name}+{self.key_id.hex()}"

    def verify(self, checkpoint_text: str, sig: NoteSignature) -> int | None:
        """The cosignature's timestamp if ``sig`` is this key's valid cosignature, else None."""
        if (sig.name, sig.key_id) != (self.name, self.key_id) or len(sig.signature) != 8 + 64:
            return None
        (timestamp,) = struct.unpack(">Q", sig.signature[:8])
        if timestamp > MAX_TIMESTAMP:
            return None
        try:
            self._key.verify(sig.signature[8:], cosigned_message(checkpoint_text, timestamp))
        except InvalidSignature:
            return None
        return int(timestamp)


def cosignature_line(checkpoint_text: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """A cosignature/v1 signature line (what a witness returns; used to test the verifier)."""
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = key.sign(cosigned_message(checkpoint_text, timestamp))
    blob = key_id(name, public, ALG_COSIGNATURE_V1) + struct.pack(">Q", timestamp) + sig
    return f"{SIG_PREFIX}{name} {base64.b64encode(blob).decode('ascii')}\n"


@dataclass(frozen=True)
class WitnessConfig:
    """One configured witness: its key and, for online use, its submission URL prefix."""

    verifier: CosignatureVerifier
    url: str | None = None

    @property
    def name(self) -> str:
        """The witness's key name."""
        return self.verifier.name


def parse_witness(spec: str) -> WitnessConfig:
    """Parse ``VKEY`` or ``URL=VKEY`` (URL: http(s), no '=' in it); raise ConfigError."""
    spec = spec.strip()
    url: str | None = None
    vkey = spec
    if spec.startswith(("http://", "https://")):
        url, sep, vkey = spec.partition("=")
        if not sep:
            raise ConfigError(f"witness {spec!r}: want URL=VKEY")
        if any(c.isspace() for c in url) or len(url) > 2000:
            raise ConfigError(f"witness URL {url!r} is not a valid URL")
        url = url.rstrip("/")
    elif "://" in spec.split("+", 1)[0]:
        raise ConfigError(f"witness {spec!r}: the URL must be http:// or https://")
    try:
        return WitnessConfig(CosignatureVerifier.from_vkey(vkey), url)
    except SignatureError as e:
        raise ConfigError(f"witness {spec!r}: {e}") from e


def parse_witnesses(text: str) -> list[WitnessConfig]:
    """Parse a comma-separated list of witnesses (``TACHO_WITNESSES``); duplicates refused."""
    out: list[WitnessConfig] = []
    for part in text.split(","):
        if part.strip():
            w = parse_witness(part)
            if any(o.verifier.vkey == w.verifier.vkey for o in out):
                raise ConfigError(f"witness {w.verifier.ident} is listed twice")
            out.append(w)
    return out


def add_checkpoint_body(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The ``add-checkpoint`` request: ``old N``, proof lines, a blank line, the signed note."""
    if old_size < 0:
        raise CheckpointError(f"old size {old_size} is negative")
    if old_size == 0 and proof:
        raise CheckpointError("the proof must be empty when the old size is 0")
    if len(proof) > MAX_PROOF_LINES:
        raise CheckpointError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
    lines = [f"old {old_size}\n"] + [base64.b64encode(h).decode("ascii") + "\n" for h in proof]
    return ("".join(lines) + "\n" + note).encode("utf-8")


def parse_size_body(body: bytes) -> int:
    """The tree size in a ``409 Conflict`` body (``text/x.tlog.size``: decimal + newline)."""
    if not _SIZE_RE.match(body):
        raise CheckpointError(f"witness sent a malformed tree size {body[:40]!r}")
    return int(body)


def parse_cosignatures(body: bytes) -> list[NoteSignature]:
    """The note signature lines of a ``200`` response (every line ``— name base64``)."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise SignatureError(f"witness response is over {MAX_RESPONSE_BYTES} bytes")
    if not body.endswith(b"\n"):
        raise SignatureError("witness response does not end in a newline")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SignatureError("witness response is not UTF-8") from e
    # the signed-note parser checks each line: a dummy text, a blank line, the signature block
    return split_note("x\n\n" + text)[1]


@dataclass(frozen=True)
class Cosigned:
    """A valid cosignature by one configured witness."""

    witness: str  # name+keyid
    line: str  # the signature line, newline included
    timestamp: int


def valid_cosignatures(
    checkpoint_text: str, sigs: Iterable[NoteSignature], witnesses: Sequence[CosignatureVerifier]
) -> list[Cosigned]:
    """The cosignatures among ``sigs`` that verify with one of ``witnesses`` (newest per witness)."""
    best: dict[str, Cosigned] = {}
    for sig in sigs:
        if len(sig.key_id) != KEY_ID_SIZE:
            continue
        for w in witnesses:
            t = w.verify(checkpoint_text, sig)
            if t is not None and (w.ident not in best or best[w.ident].timestamp < t):
                best[w.ident] = Cosigned(w.ident, sig.line + "\n", t)
    return list(best.values())


@dataclass
class WitnessReport:
    """What one witness says about the ledger's newest checkpoint (``tacho verify --witness``)."""

    witness: str
    url: str | None = None
    cosigned: bool = False
    timestamp: int | None = None
    witness_size: int | None = None
    problem: str | None = None  # rollback | fork | refused | unreachable | missing
    reason: str | None = None


@dataclass
class WitnessVerdict:
    """Whether enough witnesses cosigned, and the first reason why not."""

    ok: bool
    threshold: int
    cosigned: int
    reports: list[WitnessReport] = field(default_factory=list)
    reason: str | None = None


def check_witnesses(
    checkpoint: Checkpoint, reports: Sequence[WitnessReport], threshold: int
) -> WitnessVerdict:
    """Fail on any rollback or fork a witness reports, else unless ``threshold`` cosigned."""
    n = sum(1 for r in reports if r.cosigned)
    verdict = WitnessVerdict(ok=False, threshold=threshold, cosigned=n, reports=list(reports))
    for kind in ("rollback", "fork"):
        for r in reports:
            if r.problem == kind:
                verdict.reason = f"witness {r.witness}: {r.reason}"
                return verdict
    if n < threshold:
        missing = "; ".join(f"{r.witness}: {r.reason}" for r in reports if not r.cosigned)
        verdict.reason = (
            f"only {n} of the {threshold} witness cosignatures required on the newest checkpoint "
            f"(size {checkpoint.size}) are there ({missing})"
        )
        return verdict
    verdict.ok = True
    return verdict
