"""The auditor's state file (``tacho verify --state FILE``): the newest checkpoint proven so far.

Like a transparency-log client's stored tree head: read at the start of each run as one more
trusted checkpoint (so an older or forked ledger is refused), replaced atomically (mode 0600)
only after a run that proved a checkpoint at least as new.
"""

from __future__ import annotations

import os
from pathlib import Path

from api.witness_check import stored_cosignatures
from domain.checkpoint import Checkpoint
from domain.errors import ConfigError
from domain.note import split_note
from domain.ports import LedgerStore
from domain.verify import Trusted
from domain.witness import WitnessConfig

MAX_STATE_BYTES = 64 * 1024


def read_state(path: Path) -> Trusted | None:
    """The stored checkpoint as a trusted one, or None on the first run (no file yet)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the state file {path}: {e.strerror}") from e
    if len(raw) > MAX_STATE_BYTES:
        raise ConfigError(f"state file {path} is over {MAX_STATE_BYTES} bytes: not a checkpoint")
    return Trusted(raw.decode("utf-8", errors="replace"), f"state file {path}")


def write_state(path: Path, note: str) -> None:
    """Replace the state file atomically (write a 0600 temporary beside it, fsync, rename)."""
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write the state file {path}: no directory {path.parent}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(note)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def note_size(note: str) -> int:
    """The tree size of a signed checkpoint note."""
    return Checkpoint.parse(split_note(note)[0]).size


def save_state(
    path: Path, store: LedgerStore, newest: str, witnesses: list[WitnessConfig], prior: Trusted | None
) -> dict[str, object]:
    """After a passing run: keep the newest proven checkpoint, with the cosignatures that verified.

    A state newer than every stored checkpoint (it covers a tail signed elsewhere, proven by
    this run) is kept as it is: the state never moves back.
    """
    size = note_size(newest)
    if prior is not None and note_size(prior.note) > size:
        return {"path": str(path), "size": note_size(prior.note), "updated": False}
    valid = stored_cosignatures(store, newest, witnesses) if witnesses else {}
    lines = "".join(c.line for c in store.cosignatures(size) if c.witness in valid)
    write_state(path, newest + lines)
    return {"path": str(path), "size": size, "updated": True}
