"""Running agents live: real adapters and tools, every step recorded into the ledger."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from domain.ledger import Ledger
from domain.ports import Source
from replay.recorder import LedgerRecorder, RecordTotals
from tachograph.agents import AgentSpec
from tachograph.builder import RunSpec
from tachograph.context import ApprovalDecision, run_agent  # noqa: F401  (rewritten with the replay move)
from tachograph.runtime import LiveContext  # noqa: F401

Approver = Callable[[str, str, "str | None"], "ApprovalDecision | None"]
from tachograph.models import ModelRegistry


def run_live(
    agent: AgentSpec,
    specs: Iterable[RunSpec],
    *,
    model: str,
    models: ModelRegistry,
    clock: Callable[[], float],
    ledger: Ledger | None = None,
    approver: Approver | None = None,
) -> tuple[list[list[dict[str, Any]]], RecordTotals | None]:
    """Run the agent once per spec (in order) and record each run into the ledger."""
    recorder = LedgerRecorder(ledger, Source(kind="agent", name=agent.ref)) if ledger else None
    out: list[list[dict[str, Any]]] = []
    for spec in specs:
        ctx = LiveContext(
            spec, tools=agent.tools, prompts=agent.prompts, model=model, models=models,
            clock=clock, approver=approver,
        )
        events = run_agent(agent.fn, ctx)
        out.append(events)
        if recorder is not None:
            recorder.add(events)
    return out, (recorder.flush() if recorder is not None else None)
