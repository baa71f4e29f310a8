"""Each run's last verified entry, as stitching the next entries of the run needs it.

A full verification (``verify_log``) keeps every run's last entry in memory while it scans: a
run's entries are spread over the whole ledger. What it ends with is what ``verify_tail`` starts
from, and a server keeps that state for as long as it serves: at ten million entries (about a
million runs) every run's entry is some 400 MB. So a state kept for incremental verification is
*bounded*: it holds the runs verified most recently, and a run it no longer holds is read back
from the store when it gets a new entry (``RangeReaderBase.last_of_runs``): the run's entry with
the highest seq among the verified ones, proven included at its index in the verified tree (an
RFC 9162 inclusion proof against the verified root), so a row rewritten since it was verified is
found, not trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from domain import merkle
from domain.errors import NotFoundError, ProofError, VerificationError
from domain.verify_scan import LAST_LEAF, RunSpan

RunKey = tuple[Any, Any]
"""(workspace, run_id)."""

Lookup = Callable[[Sequence[RunKey], int], Mapping[RunKey, tuple[int, bytes]]]
"""Each run's stored entry with the highest seq below a position: (index, bytes)."""

KEPT_RUNS = 32_768
"""Runs a bounded state holds in memory (about 15 MB), the most recently verified: far more than
agents run at once, so a run read back from the store is one that went quiet for a long time."""


class RunChains:
    """The last verified entry of each run: every run's (``capacity`` None) or the most recent
    ``capacity`` runs', the others found through ``lookup`` when they get new entries."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.recent: dict[RunKey, RunSpan] = {}  # least recently verified first when bounded
        self.count = 0  # distinct runs verified
        self.lookup: Lookup | None = None
        self.looked_up = 0  # runs read back from the store (for tests and metrics)

    def __len__(self) -> int:
        return len(self.recent)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["lookup"] = None  # bound to a store connection: set again where the state is used
        return state

    def get(self, key: RunKey) -> RunSpan | None:
        """The run's last verified entry, if held in memory."""
        return self.recent.get(key)

    def known(self, keys: Iterable[RunKey], position: int, root: Callable[[], bytes],
              node: merkle.NodeGetter | None) -> None:
        """Bring the runs of ``keys`` that are not in memory back from the store: their last entry
        among the ``position`` verified ones, proven included in the verified tree (``root()``)."""
        if self.capacity is None or self.lookup is None:
            return
        missing = [k for k in keys if k not in self.recent]
        if not missing or position == 0:
            return
        found = self.lookup(missing, position)
        if not found:
            return
        if node is None:
            raise ValueError("looking runs up needs the store's Merkle nodes")
        verified_root = root()
        for key, (index, data) in found.items():
            self.recent[key] = _proven_span(key, index, data, position, verified_root, node)
            self.looked_up += 1

    def update(self, runs: Mapping[RunKey, RunSpan]) -> None:
        """Take a chunk's runs, stitched (their last entries now the verified ones)."""
        recent = self.recent
        if self.capacity is None:
            self.count += sum(1 for k in runs if k not in recent)
            recent.update(runs)
            return
        for key, span in runs.items():
            if recent.pop(key, None) is None:
                self.count += 1  # neither in memory nor found in the store (``known``): a new run
            recent[key] = span
        self.trim(self.capacity)

    def trim(self, capacity: int) -> None:
        """Keep the ``capacity`` runs verified most recently (a chunk's span starts at the run's
        first entry in the newest chunk that has it); bound from now on."""
        recent = self.recent
        if len(recent) > capacity:
            if self.capacity is None:  # unordered so far: order by where each run was last seen
                kept = sorted(recent.items(), key=lambda item: item[1][0])[-capacity:]
                self.recent = dict(kept)
            else:
                for key in list(recent)[: len(recent) - capacity]:
                    del recent[key]
        elif self.capacity is None:
            self.recent = dict(sorted(recent.items(), key=lambda item: item[1][0]))
        self.capacity = capacity


def _proven_span(key: RunKey, index: int, data: bytes, size: int, root: bytes,
                 node: merkle.NodeGetter) -> RunSpan:
    """The span of a run's last verified entry read back from the store, once its bytes are
    those verified at ``index`` and it is an event of that run."""
    leaf = merkle.leaf_hash(data)
    try:
        merkle.verify_inclusion(leaf, index, size, merkle.inclusion_proof(index, size, node), root)
    except (ProofError, NotFoundError) as e:
        raise VerificationError(
            f"the stored entry at index {index}, run {key[1]!r}'s last verified entry, is not the "
            f"entry verified at that index ({e}): rewritten since it was verified", index,
        ) from e
    try:
        d = orjson.loads(data)
        ev = d["event"]
        seq = ev["seq"]
        same = (ev["workspace"], ev["run_id"]) == key and type(seq) is int
    except (orjson.JSONDecodeError, KeyError, TypeError):
        same = False
    if not same:
        raise VerificationError(
            f"the store gives the entry at index {index} as run {key[1]!r}'s last, but it is not an "
            "entry of that run (its index columns were rewritten)", index,
        )
    span: RunSpan = [index, d.get("prev"), seq, None, seq]
    span[LAST_LEAF] = leaf.hex()
    return span
