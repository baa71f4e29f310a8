"""``make demo``: run the example agents live on ``sim-small-v1``, then replay them on ``sim-large-v2``."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from domain.ledger import Ledger, iso
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from replay.live import run_live
from replay.render import render_report
from replay.report import Gate
from replay.store import ReplayReports
from tachograph.agents import load_agent
from tachograph.builder import RunSpec
from tachograph.context import ApprovalDecision
from tachograph.models import ModelRegistry

EXAMPLES = ("examples.triage:triage", "examples.invoices:match_invoice")


def demo_approver(summary: str, risk: str, change_id: str | None) -> ApprovalDecision:
    """A stand-in approver: approves unless the risk is high."""
    if risk == "high":
        return ApprovalDecision("rejected", "ops@demo.test", "high risk")
    return ApprovalDecision("approved", "ops@demo.test")


def run_demo(ledger: Ledger, settings: Any, runs: int = 40, workspace: str = "demo") -> list[dict[str, Any]]:
    """Record example runs live, fidelity-check them, then what-if replay them on sim-large-v2.

    Returns each stored replay: its id, report file, candidate model, summary and gate.
    """
    done: list[dict[str, Any]] = []
    console = Console(highlight=False)
    models = ModelRegistry()
    stamp = f"{int(ledger.clock()):x}"
    reports = ReplayReports(settings.data_dir / "replays")
    for ref in EXAMPLES:
        agent = load_agent(ref)
        module = __import__(ref.split(":")[0], fromlist=["inputs"])
        workflow = agent.workflow or ref
        specs = [
            RunSpec(
                workspace=workspace, run_id=f"demo-{stamp}-{workflow}-{i:03d}", workflow=workflow,
                agent=agent.identity or {"id": ref, "version": "0"}, input=inp,
                budget={"max_model_calls": 4}, labels={"route": "simulated/sim-small-v1"},
            )
            for i, inp in enumerate(module.inputs(runs, salt=stamp))
        ]
        _, totals = run_live(agent, specs, model="sim-small-v1", models=models, clock=ledger.clock,
                             ledger=ledger, approver=demo_approver)
        console.rule(f"{workflow}: {len(specs)} runs recorded live on sim-small-v1 "
                     f"({totals.accepted if totals else 0} events)")
        recorded = load_runs(ledger.store, run_ids=[s.run_id for s in specs])
        for rid, model in ((f"demo-{stamp}-{workflow}-fidelity", None), (f"demo-{stamp}-{workflow}-large", "sim-large-v2")):
            config = ReplayConfig(rid, iso(ledger.clock()), candidate_model=model,
                                  gate=Gate(max_outcome_change=None))
            report = run_replay(recorded, agent, config, models, ledger=ledger)
            path = reports.save(report)
            done.append({"replay_id": rid, "workflow": workflow, "file": str(path),
                         "candidate_model": model, "summary": report["summary"],
                         "gate": report["gate"]})
            render_report(report, console, max_runs=8)
            console.print(f"stored: tacho replay show {rid}\n")
    ledger.checkpoint(force=True)
    return done
