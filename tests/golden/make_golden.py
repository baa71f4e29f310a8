"""Regenerate the golden recorded histories in this folder (run from the repo root).

    .venv/bin/python -m tests.golden.make_golden

Each file is JSONL of contract events recorded live by an example agent on ``sim-small-v1``
through the agent runtime (``tachograph.runtime.Runtime`` over a throwaway ledger), with a
stepping clock and deterministic run, event and trace ids; a stand-in person
(``ops@golden.test``) decides the approvals through the platform while the agent waits.
``triage-nondeterministic.jsonl`` is a triage history whose recorded model answer was edited
afterwards, so replaying it must report non-determinism.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

from domain.approvals import ApprovalRow
from ingest.embedded import StandInApprover, Verdict, embedded_runtime
from tachograph.agents import load_agent
from tachograph.builder import seq_event_id
from tachograph.contract.canonical import dumps
from tachograph.models import ModelRegistry
from tests.factories import make_ledger

HERE = Path(__file__).parent
START = 1_793_000_000.0  # 2026-10-26T08:53:20Z
WORKSPACE = "golden"
APPROVER = "ops@golden.test"


class SteppingClock:
    """A clock that moves 12.5 ms every time it is read."""

    def __init__(self, start: float = START) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 0.0125
        return self.t


def approve_unless_high_risk(row: ApprovalRow) -> Verdict:
    """The stand-in person's rule: approves unless the risk is high."""
    if row.risk == "high":
        return "rejected", "high risk"
    return "approved", None


def trace_ids(prefix: str) -> Iterator[str]:
    """Deterministic W3C trace ids, one per run."""
    for n in count():
        yield hashlib.sha256(f"{prefix}/{n}".encode()).hexdigest()[:32]


def record(ref: str, prefix: str, inputs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Run an example agent live over inputs; return each run's events."""
    agent = load_agent(ref)
    traces = trace_ids(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = make_ledger(Path(tmp) / "ledger.db", approval_decisions="person")
        with StandInApprover(ledger, WORKSPACE, APPROVER, approve_unless_high_risk), \
                embedded_runtime(ledger, WORKSPACE, clock=SteppingClock(), monotonic=SteppingClock(0.0),
                                 event_ids=seq_event_id, trace_ids=lambda: next(traces), models=ModelRegistry(),
                                 model="sim-small-v1") as rt:
            return [
                rt.run(agent, inp, run_id=f"{prefix}-{i:02d}", budget={"max_model_calls": 4}).events
                for i, inp in enumerate(inputs)
            ]


def write(name: str, runs: list[list[dict[str, Any]]]) -> None:
    """Write runs as JSONL, one event a line."""
    with (HERE / name).open("wb") as f:
        for events in runs:
            for ev in events:
                f.write(dumps(ev) + b"\n")


def main() -> None:
    """Regenerate every golden file."""
    from examples import invoices, triage

    write("triage.jsonl", record("examples.triage:triage", "triage", triage.inputs(12, salt="golden")))
    write("invoices.jsonl", record("examples.invoices:match_invoice", "invoices", invoices.inputs(10, salt="g")))
    bad = record("examples.triage:triage", "triage-nd", triage.inputs(1, salt="golden"))
    for ev in bad[0]:
        if ev["type"] == "model.called":
            ev["data"]["response"]["content"] = "refund" if ev["data"]["response"]["content"] != "refund" else "billing"
            break
    write("triage-nondeterministic.jsonl", bad)


if __name__ == "__main__":
    main()
