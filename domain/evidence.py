"""Evidence bundles: one run's entries with inclusion proofs to a signed checkpoint.

Format ``tachograph.evidence/2`` is documented in docs/evidence-format.md so that a third
party can check a bundle with any RFC 9162 and C2SP signed-note implementation. Beside the
checkpoint, a bundle carries a run head: a note the ledger key signs saying how many entries
the run has in the checkpoint's tree and which is the last, so that a bundle missing its last
entries fails (docs/decisions/0003-evidence-completeness.md).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from domain import merkle
from domain.checkpoint import open_checkpoint
from domain.errors import NotFoundError, SignatureError, TachographError, VerificationError
from domain.ledger import Ledger
from domain.note import NoteVerifier, open_note
from tachograph.contract.canonical import dumps

FORMAT = "tachograph.evidence/2"
OLD_FORMAT = "tachograph.evidence/1"
RUN_HEAD_PREFIX = "tachograph run head"


def run_head_statement(
    origin: str, size: int, workspace: str, run_id: str, count: int, last_index: int, last_leaf: bytes
) -> str:
    """The text the ledger key signs: in the tree of ``size``, the run has ``count`` entries ending at ``last_leaf``."""
    leaf = base64.b64encode(last_leaf).decode()
    return f"{RUN_HEAD_PREFIX}\n{origin}\n{size}\n{workspace}\n{run_id}\n{count}\n{last_index}\n{leaf}\n"


def _run_event(data: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(entry, event) of an event entry's bytes, or None."""
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    ev = d.get("event") if isinstance(d, dict) and d.get("kind") == "event" else None
    return (d, ev) if isinstance(ev, dict) else None


def _check_run_bytes(rows: Sequence[Any], workspace: str, run_id: str) -> None:
    """The entries the index columns name for a run must be, by their bytes, its chain from seq 0."""
    prev: str | None = None
    for n, r in enumerate(rows):
        got = _run_event(r.data)
        d, ev = got if got is not None else ({}, {})
        if (ev.get("workspace"), ev.get("run_id"), ev.get("seq"), d.get("prev")) != (workspace, run_id, n, prev):
            raise VerificationError(
                f"the index columns name the entry at index {r.index} as seq {n} of run {run_id!r}, "
                "but its bytes do not say so (index columns edited: run `tacho verify`)",
                r.index,
            )
        prev = merkle.leaf_hash(r.data).hex()


def _check_nothing_after(ledger: Ledger, workspace: str, run_id: str, start: int, end: int) -> None:
    """No entry in [start, end) belongs to the run by its bytes (the columns may have been edited)."""
    needle = b'"run_id":' + dumps(run_id)
    for index, data in ledger.store.entries_containing(needle, start, end):
        got = _run_event(data)
        if got is not None and (got[1].get("workspace"), got[1].get("run_id")) == (workspace, run_id):
            raise VerificationError(
                f"the entry at index {index} belongs to run {run_id!r} by its bytes, but its index "
                "columns do not say so (index columns edited: run `tacho verify`); no evidence "
                "bundle is built that would leave it out",
                index,
            )


def build_evidence(ledger: Ledger, workspace: str, run_id: str) -> dict[str, Any]:
    """Bundle every entry of one run with inclusion proofs to a checkpoint, and a signed run head.

    The run's entries are found by the index columns, then confirmed by their bytes: each must
    chain to the one before from seq 0, and no entry after the last, up to the checkpoint's
    size, may belong to the run by its bytes. Raises VerificationError when the columns and the
    bytes disagree, rather than build a bundle that leaves an entry out.
    """
    rows = ledger.store.run_entries(workspace, run_id)
    if not rows:
        raise NotFoundError(f"no run {run_id!r} in workspace {workspace!r}")
    _check_run_bytes(rows, workspace, run_id)
    last = rows[-1]
    cp = ledger.store.latest_checkpoint()
    if cp is None or cp.size <= last.index:
        cp = ledger.checkpoint(force=True)
        if cp is None:  # pragma: no cover - a forced checkpoint always exists
            raise TachographError("could not sign a checkpoint for the evidence bundle")
    _check_nothing_after(ledger, workspace, run_id, last.index + 1, cp.size)
    head = run_head_statement(
        ledger.config.origin, cp.size, workspace, run_id, len(rows), last.index,
        merkle.leaf_hash(last.data),
    )
    keys = []
    for key in ("initial_vkey", "current_vkey"):
        value = ledger.store.get_meta(key)
        if value and value not in keys:
            keys.append(value)
    if ledger.signer.vkey not in keys:
        keys.append(ledger.signer.vkey)
    return {
        "format": FORMAT,
        "run_id": run_id,
        "workspace": workspace,
        "checkpoint": cp.note,
        "run_head": ledger.signer.sign(head),
        "verifier_keys": keys,
        "entries": [
            {
                "index": r.index,
                "bytes": base64.b64encode(r.data).decode(),
                "proof": [
                    base64.b64encode(h).decode()
                    for h in merkle.inclusion_proof(r.index, cp.size, ledger.store.node)
                ],
            }
            for r in rows
        ],
    }


@dataclass
class EvidenceResult:
    """Outcome of checking an evidence bundle."""

    ok: bool
    run_id: str | None
    workspace: str | None
    entries: int
    tree_size: int | None = None
    outcome: str | None = None
    complete: bool = False
    whole: bool = False
    trusted: str = "bundle keys"
    reason: str | None = None
    position: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as JSON."""
        return asdict(self)


class _Bad(Exception):
    def __init__(self, reason: str, position: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


def verify_evidence(
    bundle: Any, trusted_keys: Sequence[str] = (), *, allow_incomplete: bool = False
) -> EvidenceResult:
    """Check a bundle offline: signatures, inclusion proofs, run chain and the signed run head.

    ``whole`` in the result says the run head proved that the bundle holds every entry the run
    has in the checkpoint's tree. A bundle without one (format /1) fails unless
    ``allow_incomplete``, and then proves only that its entries are a gapless start of the run.
    """
    result = EvidenceResult(False, None, None, 0)
    try:
        _verify_bundle(bundle, trusted_keys, result, allow_incomplete)
    except _Bad as e:
        result.reason, result.position = e.reason, e.position
        return result
    result.ok = True
    return result


def _verify_bundle(
    bundle: Any, trusted_keys: Sequence[str], result: EvidenceResult, allow_incomplete: bool
) -> None:
    if not isinstance(bundle, dict) or bundle.get("format") not in (FORMAT, OLD_FORMAT):
        raise _Bad(f"not a {FORMAT} bundle")
    if bundle.get("format") == OLD_FORMAT and not allow_incomplete:
        raise _Bad(
            f"bundle does not prove completeness: a {OLD_FORMAT} bundle has no signed run head, so "
            "entries after its last one could have been left out (rebuild it, or allow incomplete "
            "bundles explicitly)"
        )
    result.run_id, result.workspace = bundle.get("run_id"), bundle.get("workspace")
    keys = list(trusted_keys) if trusted_keys else list(bundle.get("verifier_keys") or [])
    result.trusted = "given keys" if trusted_keys else "bundle keys (pin one with --trusted-key)"
    try:
        verifiers = [NoteVerifier.from_vkey(k) for k in keys]
        cp, _ = open_checkpoint(str(bundle.get("checkpoint")), verifiers)
    except TachographError as e:
        raise _Bad(f"checkpoint does not verify: {e}") from e
    result.tree_size = cp.size
    head = _open_run_head(bundle, verifiers, cp.origin, cp.size, result) if bundle["format"] == FORMAT else None
    entries = bundle.get("entries")
    if not isinstance(entries, list) or not entries:
        raise _Bad("bundle has no entries")
    prev: str | None = None
    for n, item in enumerate(entries):
        try:
            index = int(item["index"])
            data = base64.b64decode(item["bytes"], validate=True)
            proof = [base64.b64decode(h, validate=True) for h in item["proof"]]
        except (KeyError, TypeError, ValueError) as e:
            raise _Bad(f"entry #{n} is malformed: {e}") from e
        leaf = merkle.leaf_hash(data)
        try:
            merkle.verify_inclusion(leaf, index, cp.size, proof, cp.root_hash)
        except TachographError as e:
            raise _Bad(f"entry at index {index} is not in the signed tree: {e}", index) from e
        try:
            d = orjson.loads(data)
            ev = d["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise _Bad(f"entry at index {index} is not an event entry", index) from e
        if d.get("index") != index or d.get("log") != cp.origin:
            raise _Bad(f"entry at index {index} claims index {d.get('index')} of log {d.get('log')!r}", index)
        if ev.get("run_id") != result.run_id or ev.get("workspace") != result.workspace:
            raise _Bad(f"entry at index {index} belongs to another run", index)
        if ev.get("seq") != n:
            raise _Bad(f"entry at index {index} has seq {ev.get('seq')}, expected {n} (missing entry)", index)
        if d.get("prev") != prev:
            raise _Bad(f"entry at index {index} does not chain to the previous entry of the run", index)
        prev = leaf.hex()
        if ev.get("type") == "run.completed":
            result.outcome = ev["data"].get("outcome")
            result.complete = True
        result.entries += 1
    if head is not None:
        count, last_index, last_leaf = head
        if (count, last_index, last_leaf) != (result.entries, index, leaf):
            raise _Bad(
                f"bundle does not prove completeness: the signed run head says the run has {count} "
                f"entries in the tree of size {cp.size}, the last at index {last_index}; the bundle "
                f"has {result.entries}, the last at index {index} (an entry is missing or added)",
                index,
            )
        result.whole = True


def _open_run_head(
    bundle: dict[str, Any], verifiers: Sequence[NoteVerifier], origin: str, size: int, result: EvidenceResult
) -> tuple[int, int, bytes]:
    """Check the run head's signature and that it speaks of this bundle's run and tree: (count, last index, last leaf)."""
    note = bundle.get("run_head")
    if not isinstance(note, str):
        raise _Bad("bundle does not prove completeness: it has no signed run head")
    try:
        text = open_note(note, verifiers).text
    except SignatureError as e:
        raise _Bad(f"run head does not verify: {e}") from e
    lines = text.split("\n")
    try:
        prefix, h_origin, h_size, h_ws, h_run, count, last_index, leaf, _ = lines
        fields = (int(h_size), int(count), int(last_index), base64.b64decode(leaf, validate=True))
    except ValueError as e:
        raise _Bad(f"run head is malformed: {e}") from e
    if (prefix, h_origin, fields[0], h_ws, h_run) != (RUN_HEAD_PREFIX, origin, size, result.workspace, result.run_id):
        raise _Bad(
            f"run head speaks of run {h_run!r} of {h_ws!r} in a tree of size {h_size} of {h_origin!r}, "
            f"not of this bundle's run {result.run_id!r} of {result.workspace!r} in its checkpoint "
            f"(size {size} of {origin!r})"
        )
    return fields[1], fields[2], fields[3]
