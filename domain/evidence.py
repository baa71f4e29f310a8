"""Evidence bundles: one run's entries with inclusion proofs to a signed checkpoint.

Format ``tachograph.evidence/1`` is documented in docs/evidence-format.md so that a third
party can check a bundle with any RFC 9162 and C2SP signed-note implementation.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from domain import merkle
from domain.checkpoint import open_checkpoint
from domain.errors import NotFoundError, TachographError
from domain.ledger import Ledger
from domain.note import NoteVerifier

FORMAT = "tachograph.evidence/1"


def build_evidence(ledger: Ledger, workspace: str, run_id: str) -> dict[str, Any]:
    """Bundle every entry of one run with inclusion proofs to a checkpoint that covers them."""
    rows = ledger.store.run_entries(workspace, run_id)
    if not rows:
        raise NotFoundError(f"no run {run_id!r} in workspace {workspace!r}")
    last = max(r.index for r in rows)
    cp = ledger.store.latest_checkpoint()
    if cp is None or cp.size <= last:
        cp = ledger.checkpoint(force=True)
        if cp is None:  # pragma: no cover - a forced checkpoint always exists
            raise TachographError("could not sign a checkpoint for the evidence bundle")
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


def verify_evidence(bundle: Any, trusted_keys: Sequence[str] = ()) -> EvidenceResult:
    """Check a bundle offline: signature, inclusion proofs, run chain and contiguity."""
    result = EvidenceResult(False, None, None, 0)
    try:
        _verify_bundle(bundle, trusted_keys, result)
    except _Bad as e:
        result.reason, result.position = e.reason, e.position
        return result
    result.ok = True
    return result


def _verify_bundle(bundle: Any, trusted_keys: Sequence[str], result: EvidenceResult) -> None:
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise _Bad(f"not a {FORMAT} bundle")
    result.run_id, result.workspace = bundle.get("run_id"), bundle.get("workspace")
    keys = list(trusted_keys) if trusted_keys else list(bundle.get("verifier_keys") or [])
    result.trusted = "given keys" if trusted_keys else "bundle keys (pin one with --trusted-key)"
    try:
        verifiers = [NoteVerifier.from_vkey(k) for k in keys]
        cp, _ = open_checkpoint(str(bundle.get("checkpoint")), verifiers)
    except TachographError as e:
        raise _Bad(f"checkpoint does not verify: {e}") from e
    result.tree_size = cp.size
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
