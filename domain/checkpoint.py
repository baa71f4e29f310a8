"""C2SP transparency-log checkpoints (c2sp.org/tlog-checkpoint): text form and signing."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from domain.errors import CheckpointError
from domain.note import NoteSigner, NoteVerifier, open_note

ROOT_SIZE = 32
MAX_SIZE = (1 << 64) - 1
_SIZE_RE = re.compile(r"(?:0|[1-9][0-9]*)\Z")


def _check_line(value: str, what: str) -> None:
    if not value:
        raise CheckpointError(f"checkpoint {what} must be non-empty")
    for c in value:
        if c < " " or c == "\x7f":
            raise CheckpointError(f"checkpoint {what} contains control character U+{ord(c):04X}")


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_SIZE:
            raise CheckpointError(f"checkpoint size {self.size} is outside 0..2**64-1")
        if len(self.root_hash) != ROOT_SIZE:
            raise CheckpointError(
                f"checkpoint root hash must be {ROOT_SIZE} bytes, got {len(self.root_hash)}"
            )
        for ext in self.extensions:
            _check_line(ext, "extension line")

    def to_text(self) -> str:
        """Return the checkpoint note text, every line ending in a newline."""
        root64 = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.size), root64, *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text strictly; raise CheckpointError on any deviation."""
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint text must end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint needs at least 3 lines, got {len(lines)}")
        origin, size_line, root_line, *extensions = lines
        if not _SIZE_RE.match(size_line):
            raise CheckpointError(
                f"checkpoint size {size_line!r} is not a decimal without leading zeros"
            )
        try:
            root = base64.b64decode(root_line.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as e:
            raise CheckpointError(f"checkpoint root {root_line!r} is not base64") from e
        if base64.b64encode(root).decode("ascii") != root_line:
            raise CheckpointError(f"checkpoint root {root_line!r} is not canonical base64")
        return cls(origin, int(size_line), root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """Return the checkpoint as a signed note."""
    return signer.sign(cp.to_text())


def open_checkpoint(
    note: str | bytes, verifiers: Sequence[NoteVerifier], *, origin: str | None = None
) -> tuple[Checkpoint, list[str]]:
    """Verify a signed checkpoint note and parse it; return it with the names that signed.

    Raises SignatureError for bad signatures and CheckpointError for a malformed body or,
    when ``origin`` is given, a checkpoint from another log.
    """
    opened = open_note(note, verifiers)
    cp = Checkpoint.parse(opened.text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not the expected {origin!r}")
    return cp, opened.verified_by
