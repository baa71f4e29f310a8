"""``tacho verify --witness``: do enough witnesses vouch for the ledger's newest checkpoint?

Offline (``VKEY``): a valid cosignature by that witness is stored with the checkpoint. Online
(``URL=VKEY``): the witness is asked too, by submitting the checkpoint (see
:func:`api.witness_client.exchange_all`); a witness holding a larger tree means the ledger was
rolled back, one holding another tree means a fork, whatever the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from domain.checkpoint import Checkpoint
from domain.errors import SignatureError
from domain.note import split_note
from domain.ports import LedgerStore
from domain.witness import (
    WitnessConfig,
    WitnessReport,
    WitnessVerdict,
    check_witnesses,
    parse_cosignatures,
    valid_cosignatures,
)

if TYPE_CHECKING:  # httpx loads only when a witness is asked online
    from api.witness_client import ProofFn


def stored_cosignatures(store: LedgerStore, note: str, witnesses: Sequence[WitnessConfig]) -> dict[str, int]:
    """{witness ident: timestamp} of the valid stored cosignatures of the checkpoint ``note``."""
    text = split_note(note)[0]
    size = Checkpoint.parse(text).size
    lines = "".join(c.line for c in store.cosignatures(size))
    if not lines:
        return {}
    try:
        sigs = parse_cosignatures(lines.encode())
    except SignatureError:
        return {}
    return {c.witness: c.timestamp for c in valid_cosignatures(text, sigs, [w.verifier for w in witnesses])}


def verify_witnesses(
    store: LedgerStore,
    note: str,
    witnesses: Sequence[WitnessConfig],
    threshold: int,
    proof: ProofFn,
    timeout_s: float,
) -> WitnessVerdict:
    """Reports for each witness about checkpoint ``note`` and the verdict for ``threshold``."""
    cp = Checkpoint.parse(split_note(note)[0])
    stored = stored_cosignatures(store, note, witnesses)
    from api.witness_client import exchange_all

    online = {o.witness: o for o in exchange_all(witnesses, note, proof, timeout_s)}
    reports = []
    for w in witnesses:
        ident = w.verifier.ident
        r = WitnessReport(ident, w.url)
        if w.url is None:
            r.cosigned = ident in stored
            r.timestamp = stored.get(ident)
            if not r.cosigned:
                r.problem = "missing"
                r.reason = f"no valid cosignature of checkpoint {cp.size} is stored (never cosigned, or not yet)"
        else:
            o = online[ident]
            r.witness_size = o.witness_size
            r.cosigned = o.status == "cosigned"
            r.timestamp = o.cosignature.timestamp if o.cosignature else None
            if not r.cosigned:
                r.problem = o.status
                r.reason = o.reason
        reports.append(r)
    return check_witnesses(cp, reports, threshold)
