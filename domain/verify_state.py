"""What a verification carries from chunk to chunk: enough, once it ends, to verify what follows.

``verify_log`` (``domain/verify.py``) scans a ledger from its first entry and hands each chunk's
scan to ``VerifyState.take``; ``verify_tail`` (``domain/verify_tail.py``) starts from the state a
verification ended with and hands it the scans of the entries appended since. Both therefore
apply the same checks: run chains and seqs stitched across chunks, event ids, approvals, key
rotations and checkpoint signatures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from domain import merkle
from domain.checkpoint import Checkpoint, open_checkpoint
from domain.errors import CheckpointError, SignatureError, TachographError, VerificationError
from domain.ledger import rotation_statement
from domain.note import NoteVerifier, open_note
from domain.verify_chains import RunChains
from domain.verify_scan import (
    LAST_LEAF,
    LAST_SEQ,
    ApprovalNote,
    ChunkScan,
    chain_broken,
    seq_gap,
)

if TYPE_CHECKING:
    from domain.verify import VerifyResult

ParsedCheckpoint = tuple[Checkpoint, str, str | None]
"""A checkpoint, its signed note, and the label of a trusted one (None: one the store holds)."""

Problem = tuple[int, int, str]
"""(position, rank among problems at one position, reason): the smallest is reported."""


def parse_checkpoint(note: str, origin: str | None) -> Checkpoint:
    """Parse a checkpoint note without trusting it yet (its signature is checked separately)."""
    text = note.split("\n\n", 1)[0] + "\n"
    cp = Checkpoint.parse(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not this log's {origin!r}")
    return cp


@dataclass
class VerifyState:
    """The verified prefix of a ledger (``position`` entries) and what checking the next entry needs.

    ``frontier`` (the tree of the verified prefix) is set once a verification has ended: a
    state without it is one still in progress.
    """

    origin: str | None
    timeline: list[tuple[int, list[NoteVerifier]]]  # the keys trusted from each size on
    approvals_from: int | None = None
    position: int = 0
    checkpoints: list[ParsedCheckpoint] = field(default_factory=list)
    by_size: dict[int, list[ParsedCheckpoint]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # of every checkpoint taken, ascending
    chains: RunChains = field(default_factory=RunChains)  # each run's last entry so far
    event_ids: set[str | None] = field(default_factory=set)  # empty when the store checks ids
    ids_collected: bool = True  # ``event_ids`` holds every id verified (the store did not check them)
    decisions: dict[tuple[Any, Any], tuple[Any, ...]] = field(default_factory=dict)
    replays: dict[tuple[Any, Any], Any] = field(default_factory=dict)  # (workspace, run) -> run it replays
    frontier: merkle.CompactRange | None = None
    last_stored: int = 0  # size of the newest stored checkpoint taken

    @classmethod
    def start(cls, trusted_keys: Sequence[str], origin: str | None, approvals_from: int | None) -> VerifyState:
        """A state before the first entry, trusting ``trusted_keys`` for the first checkpoints."""
        try:
            verifiers = [NoteVerifier.from_vkey(k) for k in trusted_keys]
        except TachographError as e:
            raise VerificationError(f"bad trusted key: {e}") from e
        if not verifiers:
            raise VerificationError("no trusted verifier key given")
        return cls(origin=origin, timeline=[(0, verifiers)], approvals_from=approvals_from)

    @property
    def trusted_keys(self) -> list[str]:
        """The keys trusted from size 0 (those given, not those rotated to)."""
        return [v.vkey for v in self.timeline[0][1]]

    @property
    def notes(self) -> list[str]:
        """The stored checkpoint notes taken, in the order taken."""
        return [note for _, note, label in self.checkpoints if label is None]

    def add_checkpoints(self, parsed: Sequence[ParsedCheckpoint]) -> None:
        """Take checkpoints (parsed, not yet checked); stored ones must not go back in size."""
        for item in parsed:
            cp, _, label = item
            if label is None:
                if cp.size < self.last_stored:
                    raise VerificationError(
                        f"checkpoint sizes go backwards ({self.last_stored} then {cp.size})", cp.size
                    )
                self.last_stored = cp.size
            self.checkpoints.append(item)
            if cp.size not in self.by_size:
                self.sizes.append(cp.size)
            self.by_size.setdefault(cp.size, []).append(item)
        self.sizes.sort()

    def keys_for(self, size: int) -> list[NoteVerifier]:
        """The keys trusted to sign a checkpoint of ``size``."""
        keys = self.timeline[0][1]
        for first, ks in self.timeline:
            if size >= first:
                keys = ks
        return keys

    def check_sigs(self, size: int, root: bytes, only: Sequence[ParsedCheckpoint] | None = None) -> None:
        """Every checkpoint of ``size`` (or those of ``only``) is signed by a key trusted for that
        size and names ``root``, the tree of the verified entries at that size."""
        for cp, note, label in self.by_size.get(size, []) if only is None else only:
            what = f"{label} (size {size})" if label else f"checkpoint of size {size}"
            try:
                open_checkpoint(note, self.keys_for(size), origin=self.origin)
            except (SignatureError, CheckpointError) as e:
                raise VerificationError(
                    f"{what} is not signed by a key trusted for that size: {e}", size
                ) from e
            if cp.root_hash != root and label:
                raise VerificationError(
                    f"{what} does not match the ledger's tree at that size: the entries before it "
                    "were rewritten after it was taken (a newer checkpoint signed over the "
                    "rewritten ledger does not make it valid)",
                    size - 1,
                )
            if cp.root_hash != root:
                raise VerificationError(
                    f"{what}: root hash does not match the entries (edited, deleted, inserted or "
                    "reordered entry before this size)",
                    size - 1,
                )

    def take(self, scan: ChunkScan, ids_checked: bool, root_at: Callable[[int], bytes]) -> list[Problem]:
        """Check a chunk's scan against everything before it; the problems found (none: call
        ``advance``). ``root_at(size)``: the tree root at a size inside the chunk.

        Key rotations in the chunk take effect here, before the problems are known in full, as
        the checkpoints after them need them; a state with problems is not advanced.
        """
        if scan.start != self.position:
            raise VerificationError(
                f"entries {self.position}..{scan.start - 1} are missing (deleted or truncated)", self.position
            )
        if self.origin is None:
            self.origin = scan.origin
        errors: list[Problem] = [(scan.error[0], 0, scan.error[1])] if scan.error else []
        # stitch each run's first entry in this chunk to its last entry in earlier chunks
        for key, (first_position, first_prev, first_seq, _, _) in scan.runs.items():
            prev = self.chains.get(key)  # runs not held were brought back first (``RunChains.known``)
            expected_prev = prev[LAST_LEAF] if prev else None
            expected_seq = prev[LAST_SEQ] + 1 if prev else 0
            if first_prev != expected_prev:
                errors.append((first_position, 1, chain_broken(key[1], first_prev, expected_prev)))
            elif first_seq != expected_seq:
                errors.append((first_position, 1, seq_gap(key[1], first_seq, expected_seq)))
        if not ids_checked:
            check_event_ids(scan, self.event_ids, errors)
        if scan.approvals:
            check_approvals(scan.approvals, self.decisions, self.replays, self.approvals_from, errors)
        limit = min(errors)[0] if errors else scan.start + scan.count
        for pos, d in scan.rotations:
            if pos >= limit:
                break
            try:
                new_key = check_rotation(d, pos, self.origin, self.keys_for(pos + 1))
            except VerificationError as e:
                errors.append((pos, 3, e.reason))
                break
            self.timeline.append((pos + 2, [new_key]))
        for size in self.sizes:
            if scan.start < size <= scan.start + scan.count and size <= limit:
                try:
                    self.check_sigs(size, root_at(size))
                except VerificationError as e:
                    errors.append((size - 1, 4, e.reason))
                    break
        return errors

    def advance(self, scan: ChunkScan) -> None:
        """Count a chunk ``take`` found no problem in as verified."""
        self.chains.update(scan.runs)
        self.position = scan.start + scan.count

    def finish(self, result: VerifyResult, root: bytes, allow_unsigned_tail: bool) -> None:
        """Fill ``result`` for the verified prefix (tree ``root``); raise if a checkpoint covers
        more than it, or (unless allowed) entries after the newest checkpoint are unsigned."""
        position = self.position
        result.entries = position
        result.runs = self.chains.count
        result.root = root.hex()
        result.trusted_keys = self.trusted_keys
        beyond_trusted = [(cp, label) for cp, _, label in self.checkpoints if label and cp.size > position]
        if beyond_trusted:
            cp, label = max(beyond_trusted, key=lambda t: t[0].size)
            raise VerificationError(
                f"{label} covers {cp.size} entries but the ledger holds only {position}: a rollback "
                "(or truncation) of the ledger to an earlier state after that checkpoint was taken",
                position,
            )
        beyond = [cp for cp, _, _ in self.checkpoints if cp.size > position]
        if beyond:
            cp = max(beyond, key=lambda c: c.size)
            raise VerificationError(
                f"a checkpoint covers {cp.size} entries but the ledger holds only {position} "
                "(truncated tail or rollback to an earlier state)",
                position,
            )
        covered = max(self.sizes, default=0)
        result.trusted_checkpoints = sorted(cp.size for cp, _, label in self.checkpoints if label)
        result.checkpoint_size = covered if self.checkpoints else None
        if covered < position and not allow_unsigned_tail:
            raise VerificationError(
                f"entries {covered}..{position - 1} are not covered by any signed checkpoint "
                "(run `tacho checkpoint` to sign them)",
                covered,
            )


def check_approvals(found: Sequence[ApprovalNote], decisions: dict[tuple[Any, Any], tuple[Any, ...]],
                    replays: dict[tuple[Any, Any], Any], required_from: int | None,
                    errors: list[Problem]) -> None:
    """Add an error for the first ``approval.decided`` (from ``required_from``) that repeats no
    earlier decision record; remember the decision records and the runs that are replays.

    A replay's ``approval.decided`` repeats, through ``replayed_from``, the decision recorded for
    an approval of the run it replays; any other run's repeats the decision on its own approval.
    """
    for note in found:
        if note.what == "decision":
            decisions.setdefault((note.workspace, note.approval_id), (note.run_id, note.decision, note.by))
        elif note.what == "replay":
            replays[(note.workspace, note.run_id)] = note.source
        elif required_from is not None and note.position >= required_from:
            why = _unbacked(note, decisions, replays.get((note.workspace, note.run_id)))
            if why is not None:
                errors.append((note.position, 2, f"approval.decided of approval {note.approval_id!r} in run "
                               f"{note.run_id!r} ({note.decision} by {note.by!r}) is not backed: {why}"))


def _unbacked(note: ApprovalNote, decisions: dict[tuple[Any, Any], tuple[Any, ...]],
              replay_of: Any) -> str | None:
    """Why an ``approval.decided`` repeats no recorded decision (``replay_of``: the run its run
    replays, if it is a replay), or None."""
    if replay_of is None and note.source is not None:
        return f"it names replayed_from {note.source!r} but run {note.run_id!r} is not a replay"
    if replay_of is not None and note.source is None:
        return f"run {note.run_id!r} replays {replay_of!r} and a replay's decision must name replayed_from"
    aid, run = (note.approval_id, note.run_id) if replay_of is None else (note.source, replay_of)
    made = decisions.get((note.workspace, aid))
    if made == (run, note.decision, note.by):
        return None
    if made is None:
        return ("no person's decision was recorded before it" if replay_of is None else
                f"no person's decision on approval {aid!r} of run {run!r} was recorded before it")
    return f"the recorded decision is {made[1]} by {made[2]!r} for run {made[0]!r}"


def check_event_ids(scan: ChunkScan, seen_before: set[str | None], errors: list[Problem]) -> None:
    """Add an error for the chunk's first event id that was seen before; remember the chunk's ids."""
    fresh = set(scan.event_ids)
    fresh.discard(None)
    if len(fresh) != len(scan.event_ids) - len(scan.rotations) or not seen_before.isdisjoint(fresh):
        seen: set[str] = set()
        for offset, k in enumerate(scan.event_ids):
            if k is not None and (k in seen_before or k in seen):
                errors.append((scan.start + offset, 2, f"event_id {k.split(chr(10))[1]!r} appears twice"))
                break
            seen.add(k) if k is not None else None
    seen_before |= fresh


def check_rotation(
    d: dict[str, Any], position: int, origin: str | None, current: list[NoteVerifier]
) -> NoteVerifier:
    """The new key a rotation entry hands over to, signed over by a key ``current`` trusts."""
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
