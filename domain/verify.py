"""Verify a ledger from its stored bytes alone: leaves, run chains, the tree and checkpoints.

The verifier reads ``(index, bytes)`` pairs and signed checkpoint notes; it needs no database,
so the same code checks a live store, a Parquet export or a copied file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from domain import merkle
from domain.checkpoint import Checkpoint, open_checkpoint
from domain.errors import CheckpointError, SignatureError, TachographError, VerificationError
from domain.ledger import rotation_statement
from domain.note import NoteVerifier, open_note


@dataclass
class VerifyResult:
    """Outcome of a verification run."""

    ok: bool
    entries: int
    checkpoints: int
    root: str | None = None
    position: int | None = None
    reason: str | None = None
    trusted_keys: list[str] = field(default_factory=list)
    runs: int = 0

    def to_json(self) -> dict[str, Any]:
        """The result as the JSON printed by ``tacho verify --json``."""
        return asdict(self)


def _check_checkpoint(note: str, origin: str | None) -> Checkpoint:
    """Parse a checkpoint note without trusting it yet (signature checked separately)."""
    text = note.split("\n\n", 1)[0] + "\n"
    cp = Checkpoint.parse(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not this log's {origin!r}")
    return cp


def verify_log(
    entries: Iterable[tuple[int, bytes]],
    checkpoint_notes: Sequence[str],
    trusted_keys: Sequence[str],
    *,
    origin: str | None = None,
    trusted_checkpoint: str | None = None,
    allow_unsigned_tail: bool = False,
) -> VerifyResult:
    """Check every entry, run chain, Merkle root, checkpoint signature and key rotation.

    Args:
        entries: ``(index, stored bytes)`` in storage order.
        checkpoint_notes: stored signed checkpoints, oldest first.
        trusted_keys: verifier keys (vkey text) trusted for the first checkpoints; later keys
            are trusted only through rotation entries signed by an earlier trusted key.
        origin: the log's origin; taken from the first checkpoint when not given.
        trusted_checkpoint: a signed checkpoint kept outside the system (detects rollback).
        allow_unsigned_tail: do not fail on entries newer than the latest checkpoint.
    """
    result = VerifyResult(ok=False, entries=0, checkpoints=len(checkpoint_notes))
    try:
        _verify(
            entries, checkpoint_notes, trusted_keys, origin, trusted_checkpoint,
            allow_unsigned_tail, result,
        )
    except VerificationError as e:
        result.reason = e.reason
        result.position = e.position
        return result
    result.ok = True
    return result


def _verify(
    entries: Iterable[tuple[int, bytes]],
    checkpoint_notes: Sequence[str],
    trusted_keys: Sequence[str],
    origin: str | None,
    trusted_checkpoint: str | None,
    allow_unsigned_tail: bool,
    result: VerifyResult,
) -> None:
    try:
        verifiers = [NoteVerifier.from_vkey(k) for k in trusted_keys]
    except TachographError as e:
        raise VerificationError(f"bad trusted key: {e}") from e
    if not verifiers:
        raise VerificationError("no trusted verifier key given")
    result.trusted_keys = [v.vkey for v in verifiers]
    notes = list(checkpoint_notes)
    if trusted_checkpoint is not None:
        notes.append(trusted_checkpoint)
    parsed: list[tuple[Checkpoint, str, bool]] = []
    for i, note in enumerate(notes):
        is_trusted = trusted_checkpoint is not None and i == len(notes) - 1
        try:
            cp = _check_checkpoint(note, origin)
        except TachographError as e:
            what = "trusted checkpoint" if is_trusted else f"checkpoint #{i + 1}"
            raise VerificationError(f"{what} is malformed: {e}") from e
        if origin is None:
            origin = cp.origin
        parsed.append((cp, note, is_trusted))
    by_size: dict[int, list[tuple[Checkpoint, str, bool]]] = {}
    for item in parsed:
        by_size.setdefault(item[0].size, []).append(item)
    last_stored = 0
    for cp, _, is_trusted in parsed:
        if not is_trusted:
            if cp.size < last_stored:
                raise VerificationError(
                    f"checkpoint sizes go backwards ({last_stored} then {cp.size})", cp.size
                )
            last_stored = cp.size

    # Keys: the first trusted keys sign from size 0; rotations add later keys.
    timeline: list[tuple[int, list[NoteVerifier]]] = [(0, verifiers)]

    def keys_for(size: int) -> list[NoteVerifier]:
        keys = timeline[0][1]
        for first, ks in timeline:
            if size >= first:
                keys = ks
        return keys

    def check_sigs(size: int, root: bytes) -> None:
        for cp, note, is_trusted in by_size.get(size, []):
            what = "trusted checkpoint" if is_trusted else f"checkpoint of size {size}"
            try:
                open_checkpoint(note, keys_for(size), origin=origin)
            except (SignatureError, CheckpointError) as e:
                raise VerificationError(
                    f"{what} is not signed by a key trusted for that size: {e}", size
                ) from e
            if cp.root_hash != root:
                raise VerificationError(
                    f"{what}: root hash does not match the entries (edited, deleted, inserted or "
                    "reordered entry before this size)",
                    size - 1,
                )

    rng = merkle.CompactRange()
    chains: dict[tuple[str, str], tuple[str, int]] = {}
    event_ids: set[tuple[str, str]] = set()
    check_sigs(0, merkle.EMPTY_ROOT)
    leaf_hash = merkle.leaf_hash
    loads = orjson.loads
    position = 0
    for index, data in entries:
        if index != position:
            raise VerificationError(
                f"stored index {index} at position {position}: an entry is missing or out of order",
                position,
            )
        if not isinstance(data, bytes):
            raise VerificationError(f"stored entry is {type(data).__name__}, not bytes", position)
        leaf = leaf_hash(data)
        try:
            d = loads(data)
        except orjson.JSONDecodeError as e:
            raise VerificationError(f"entry bytes are not valid JSON ({e})", position) from e
        if not isinstance(d, dict) or d.get("index") != position:
            raise VerificationError(
                f"entry says index {d.get('index') if isinstance(d, dict) else '?'} but sits at "
                f"position {position} (deleted, inserted, duplicated or reordered entry)",
                position,
            )
        if origin is None:
            origin = d.get("log")
        if d.get("log") != origin:
            raise VerificationError(
                f"entry belongs to log {d.get('log')!r}, not {origin!r} (spliced from another ledger)",
                position,
            )
        kind = d.get("kind")
        if kind == "event":
            _check_event(d, position, leaf, chains, event_ids)
        elif kind == "key.rotated":
            new_key = _check_rotation(d, position, origin, keys_for(position + 1))
            timeline.append((position + 2, [new_key]))
        else:
            raise VerificationError(f"unknown entry kind {kind!r}", position)
        rng.append(leaf)
        position += 1
        if position in by_size:
            check_sigs(position, rng.root())
    result.entries = position
    result.runs = len(chains)
    result.root = rng.root().hex()
    beyond = [cp for cp, _, _ in parsed if cp.size > position]
    if beyond:
        cp = max(beyond, key=lambda c: c.size)
        raise VerificationError(
            f"a checkpoint covers {cp.size} entries but the ledger holds only {position} "
            "(truncated tail or rollback to an earlier state)",
            position,
        )
    covered = max((cp.size for cp, _, _ in parsed), default=0)
    if covered < position and not allow_unsigned_tail:
        raise VerificationError(
            f"entries {covered}..{position - 1} are not covered by any signed checkpoint "
            "(run `tacho checkpoint` to sign them)",
            covered,
        )


def _check_event(
    d: dict[str, Any],
    position: int,
    leaf: bytes,
    chains: dict[tuple[str, str], tuple[str, int]],
    event_ids: set[tuple[str, str]],
) -> None:
    ev = d.get("event")
    if not isinstance(ev, dict):
        raise VerificationError("event entry has no event object", position)
    key = (ev.get("workspace"), ev.get("run_id"))
    prev = chains.get(key)  # type: ignore[arg-type]
    expected_prev = prev[0] if prev else None
    if d.get("prev") != expected_prev:
        raise VerificationError(
            f"run {ev.get('run_id')!r} chain broken: prev is {d.get('prev')!r}, expected "
            f"{expected_prev!r} (an entry of this run was removed, inserted or spliced)",
            position,
        )
    expected_seq = prev[1] + 1 if prev else 0
    if ev.get("seq") != expected_seq:
        raise VerificationError(
            f"run {ev.get('run_id')!r} seq {ev.get('seq')} where {expected_seq} was expected",
            position,
        )
    eid = (ev.get("workspace"), ev.get("event_id"))
    if eid in event_ids:
        raise VerificationError(f"event_id {eid[1]!r} appears twice", position)
    event_ids.add(eid)  # type: ignore[arg-type]
    chains[key] = (leaf.hex(), expected_seq)  # type: ignore[index]


def _check_rotation(
    d: dict[str, Any], position: int, origin: str | None, current: list[NoteVerifier]
) -> NoteVerifier:
    rot = d.get("rotation")
    if not isinstance(rot, dict):
        raise VerificationError("key rotation entry has no rotation object", position)
    try:
        new_key = NoteVerifier.from_vkey(str(rot.get("new_vkey")))
        old_key = NoteVerifier.from_vkey(str(rot.get("old_vkey")))
    except TachographError as e:
        raise VerificationError(f"key rotation names a malformed key: {e}", position) from e
    if old_key.vkey not in {k.vkey for k in current}:
        raise VerificationError(
            "key rotation is signed over by a key that was not trusted at that point", position
        )
    statement = rotation_statement(str(origin), position, old_key.vkey, new_key.vkey)
    try:
        opened = open_note(str(rot.get("statement")), [old_key])
    except SignatureError as e:
        raise VerificationError(f"key rotation statement is not signed by the old key: {e}", position) from e
    if opened.text != statement:
        raise VerificationError("key rotation statement does not match the entry", position)
    return new_key
