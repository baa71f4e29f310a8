"""The HTTP side of c2sp.org/tlog-witness: submit a checkpoint with the proof a witness needs.

One exchange (:func:`exchange`) follows the witness's answers: a ``409 Conflict`` names the
size the witness holds, and the checkpoint is resent with a consistency proof from that size;
a witness holding a larger tree, or one our proof does not extend, is a rollback or a fork,
reported as such and never retried as if it were a network error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from domain.checkpoint import Checkpoint
from domain.errors import CheckpointError, SignatureError, TachographError
from domain.note import split_note
from domain.witness import (
    MAX_RESPONSE_BYTES,
    Cosigned,
    WitnessConfig,
    add_checkpoint_body,
    parse_cosignatures,
    parse_size_body,
    valid_cosignatures,
)

ProofFn = Callable[[int, int], list[bytes]]
"""``proof(old_size, new_size)``: the ledger's RFC 9162 consistency proof."""

TERMINAL = ("rollback", "fork")
MAX_CONFLICTS = 3  # 409s followed in one exchange (one is usual: the witness names its size)


@dataclass
class Outcome:
    """How one exchange with one witness ended.

    ``status``: cosigned | rollback | fork | refused (the witness does not know our log or key,
    or calls the request malformed) | unreachable (network, timeout, 5xx: retry later).
    """

    witness: str
    size: int
    status: str
    reason: str | None = None
    witness_size: int | None = None
    cosignature: Cosigned | None = None

    def to_json(self) -> dict[str, object]:
        """The outcome as JSON (no signature bytes)."""
        return {
            "witness": self.witness,
            "size": self.size,
            "status": self.status,
            "reason": self.reason,
            "witness_size": self.witness_size,
            "timestamp": self.cosignature.timestamp if self.cosignature else None,
        }


def _post(http: httpx.Client, url: str, body: bytes) -> tuple[int, str, bytes]:
    """POST and read at most MAX_RESPONSE_BYTES + 1 of the answer."""
    with http.stream(
        "POST", url + "/add-checkpoint", content=body, headers={"Content-Type": "text/plain; charset=utf-8"}
    ) as resp:
        data = b""
        for chunk in resp.iter_bytes():
            data += chunk
            if len(data) > MAX_RESPONSE_BYTES:
                break
        return resp.status_code, resp.headers.get("content-type", ""), data


def _text(body: bytes) -> str:
    return body[:200].decode("utf-8", errors="replace").strip()


def exchange(
    http: httpx.Client, witness: WitnessConfig, note: str, proof: ProofFn, old: int = 0
) -> Outcome:
    """Submit the signed checkpoint ``note`` to ``witness``, starting from ``old`` (a guess)."""
    assert witness.url is not None
    text, _ = split_note(note)
    cp = Checkpoint.parse(text)
    ident = witness.verifier.ident

    def out(status: str, reason: str | None = None, size: int | None = None) -> Outcome:
        return Outcome(ident, cp.size, status, reason, size)

    tried: set[int] = set()
    for _ in range(MAX_CONFLICTS + 1):
        if old > cp.size:
            return out(
                "rollback",
                f"the witness holds a checkpoint of size {old} but the ledger's newest is of size "
                f"{cp.size}: the ledger was rolled back (or forked) after the witness cosigned it",
                old,
            )
        tried.add(old)
        try:
            hashes = [] if old in (0, cp.size) else proof(old, cp.size)
            body = add_checkpoint_body(old, hashes, note)
            status, ctype, data = _post(http, witness.url, body)
        except httpx.HTTPError as e:
            return out("unreachable", f"cannot reach {witness.url}: {type(e).__name__}: {e}")
        except TachographError as e:
            return out("refused", f"cannot build the request: {e}")
        if status == 200:
            try:
                found = valid_cosignatures(text, parse_cosignatures(data), [witness.verifier])
            except SignatureError as e:
                return out("refused", f"the witness answered 200 with a malformed body: {e}")
            if not found:
                return out("refused", "the witness answered 200 without a valid cosignature from its key")
            result = out("cosigned", None, cp.size)
            result.cosignature = found[0]
            return result
        if status == 409:
            try:
                held = parse_size_body(data)
            except CheckpointError as e:
                return out("refused", f"409 Conflict ({ctype}): {e}")
            if held == old:
                return out(
                    "fork",
                    f"the witness holds a different tree of size {held} than this ledger "
                    "(same size, another root): a fork or a rewritten ledger",
                    held,
                )
            if held in tried and held <= cp.size:
                return out("refused", f"the witness keeps answering 409 (sizes {sorted(tried)})", held)
            old = held
            continue
        if status == 422:
            return out(
                "fork",
                f"the witness refused the consistency proof from size {old} to {cp.size}: the tree "
                f"it holds at size {old} is not a prefix of this ledger (a fork or a rewritten "
                "ledger)",
                old,
            )
        if status in (400, 403, 404):
            return out("refused", f"HTTP {status}: {_text(data)} (is this log and its key added to the witness?)")
        return out("unreachable", f"HTTP {status}: {_text(data)}")
    return out("refused", f"the witness answered 409 Conflict {MAX_CONFLICTS + 1} times in a row (sizes {sorted(tried)})")


def client(timeout_s: float) -> httpx.Client:
    """An HTTP client for witnesses: keep-alive, bounded timeouts, no redirects."""
    return httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)


def exchange_all(
    witnesses: Sequence[WitnessConfig], note: str, proof: ProofFn, timeout_s: float
) -> list[Outcome]:
    """One exchange with each online witness (``tacho verify --witness URL=VKEY``).

    Starts from ``old`` = the checkpoint's own size: a witness at that size cosigns it again;
    one elsewhere answers 409 with the size it holds.
    """
    size = Checkpoint.parse(split_note(note)[0]).size
    with client(timeout_s) as http:
        return [exchange(http, w, note, proof, old=size) for w in witnesses if w.url]
