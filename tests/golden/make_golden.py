"""Regenerate the golden recorded histories in this folder (run from the repo root).

    .venv/bin/python -m tests.golden.make_golden

Each file is JSONL of contract events recorded live by an example agent on ``sim-small-v1``
with a stepping clock; ``triage-nondeterministic.jsonl`` is a triage history whose recorded
model answer was edited afterwards, so replaying it must report non-determinism.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tachograph.agents import load_agent
from replay.context import ApprovalDecision
from replay.live import run_live
from tachograph.models import ModelRegistry
from replay.recorder import RunSpec
from tachograph.contract.canonical import dumps

HERE = Path(__file__).parent
START = 1_793_000_000.0  # 2026-10-26T08:53:20Z


class SteppingClock:
    """A clock that moves 12.5 ms every time it is read."""

    def __init__(self, start: float = START) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 0.0125
        return self.t


def approver(summary: str, risk: str, change_id: str | None) -> ApprovalDecision:
    """Approves unless the risk is high."""
    if risk == "high":
        return ApprovalDecision("rejected", "ops@golden.test", "high risk")
    return ApprovalDecision("approved", "ops@golden.test")


def record(ref: str, prefix: str, inputs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Run an example agent live over inputs; return each run's events."""
    agent = load_agent(ref)
    specs = [
        RunSpec(
            workspace="golden", run_id=f"{prefix}-{i:02d}", workflow=agent.workflow or ref,
            agent=agent.identity, input=inp, budget={"max_model_calls": 4},
        )
        for i, inp in enumerate(inputs)
    ]
    runs, _ = run_live(agent, specs, model="sim-small-v1", models=ModelRegistry(),
                       clock=SteppingClock(), approver=approver)
    return runs


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
