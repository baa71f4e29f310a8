"""Factories shared by tests: ledgers over real stores, generated workloads, fixed clocks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from domain.approvals import record_decision
from domain.ledger import AppendReport, Ledger, LedgerConfig
from domain.note import NoteSigner
from domain.ports import Incoming, LedgerStore, Source
from domain.stores.sqlite import SQLiteStore
from domain.verify import VerifyResult, verify_log
from domain.workload import Workload
from tachograph.contract.canonical import dumps

ORIGIN = "test.example/log"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def signer(name: str = ORIGIN, seed: int = 1) -> NoteSigner:
    """A deterministic signing key."""
    return NoteSigner.from_seed(name, bytes([seed]) * 32)


def make_ledger(
    path: Path | None = None,
    *,
    store: LedgerStore | None = None,
    origin: str = ORIGIN,
    key_seed: int = 1,
    clock: FakeClock | None = None,
    **config: Any,
) -> Ledger:
    """A ledger over SQLite at ``path`` (or the given store)."""
    if store is None:
        assert path is not None
        store = SQLiteStore(path)
    return Ledger(
        store,
        signer(origin, key_seed),
        LedgerConfig(origin=origin, **config),
        clock=clock or FakeClock(),
    )


def verify_ledger(ledger: Ledger, **kw: Any) -> VerifyResult:
    """``verify_log`` over everything the ledger's store holds, trusting the ledger's key."""
    return verify_log(
        ledger.store.raw_entries(), [c.note for c in ledger.store.checkpoints()], [ledger.signer.vkey], **kw
    )


def items(events: Iterable[dict[str, Any]], name: str = "test.jsonl") -> list[Incoming]:
    """Events as incoming items with file positions."""
    return [
        Incoming(dumps(ev), Source(kind="file", name=name, line=n))
        for n, ev in enumerate(events, start=1)
    ]


def append_deciding(ledger: Ledger, events: Sequence[dict[str, Any]], name: str = "test.jsonl") -> AppendReport:
    """Append events in order as one would with people deciding: before each ``approval.decided``
    (but a replay's, which repeats a recorded one), the person it names records that decision
    through ``domain.approvals.record_decision``, as the API does. Returns the counts of all."""
    total = AppendReport()
    batch: list[Incoming] = []

    def flush() -> None:
        if batch:
            report = ledger.append(batch)
            total.results += report.results
            for name_ in ("accepted", "duplicates", "quarantined", "held"):
                setattr(total, name_, getattr(total, name_) + getattr(report, name_))
            batch.clear()

    for item, ev in zip(items(events, name), events, strict=True):
        d = ev["data"]
        if ev["type"] == "approval.decided" and "replayed_from" not in d:
            flush()
            record_decision(ledger, ev["workspace"], d["approval_id"], d["decision"], d["by"],
                            {"key_id": "test", "role": "approver", "name": d["by"]}, d.get("reason"),
                            ev["time"], ledger.clock(), run_id=ev["run_id"])
        batch.append(item)
    flush()
    total.size = ledger.store.size()
    return total


def workload_events(runs: int = 30, seed: int = 3, **kw: Any) -> list[dict[str, Any]]:
    """A deterministic list of contract-valid events."""
    return list(Workload(seed=seed, runs=runs, **kw).events())


def event(
    run_id: str = "r1",
    seq: int = 0,
    etype: str = "run.started",
    data: dict[str, Any] | None = None,
    *,
    workspace: str = "acme",
    event_id: str | None = None,
) -> dict[str, Any]:
    """One hand-built contract event."""
    if data is None:
        data = {"workflow": "wf", "mode": "execute", "risk_tier": "low"}
    return {
        "spec": "tachograph.event/1",
        "event_id": event_id or f"{run_id}-{seq}",
        "workspace": workspace,
        "run_id": run_id,
        "seq": seq,
        "type": etype,
        "time": f"2026-01-01T00:00:{seq % 60:02d}Z",
        "agent": {"id": "agent", "version": "1.0"},
        "data": data,
    }
