"""``make demo``: run the example agents live on ``sim-small-v1``, then replay them on ``sim-large-v2``.

The live runs go through the one agent runtime (``tachograph.runtime.Runtime``) into the ledger
in this process; a stand-in person decides their approvals through the platform while they wait.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console

from domain.approvals import ApprovalRow
from domain.ledger import Ledger, iso
from ingest.embedded import StandInApprover, Verdict, embedded_runtime
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from replay.render import render_report
from replay.report import Gate
from replay.store import ReplayReports
from tachograph.agents import load_agent
from tachograph.builder import seq_event_id
from tachograph.models import ModelRegistry

EXAMPLES = ("examples.triage:triage", "examples.invoices:match_invoice")
DEMO_APPROVER = "ops@demo.test"
"""Who decides the demo's approvals (a stand-in person, named as such in every decision record)."""
STAND_IN_WAIT_S = 30.0
"""How long a demo run waits for the stand-in (it decides within milliseconds; a run that waits
this long means the stand-in is broken, and it expires instead of hanging the demo)."""


def demo_policy(row: ApprovalRow) -> Verdict:
    """The stand-in person's rule: approve unless the risk is high."""
    if row.risk == "high":
        return "rejected", "high risk"
    return "approved", None


def run_demo(ledger: Ledger, settings: Any, runs: int = 40, workspace: str = "demo",
             run_ids: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Fidelity-check the example agents' runs, then what-if replay them on sim-large-v2.

    ``run_ids``: the runs to replay (the demo's first stage recorded them through the runtime,
    with people's decisions); without them, ``runs`` runs per example agent are recorded here
    first. Returns each stored replay: its id, report file, candidate model, summary and gate.
    """
    done: list[dict[str, Any]] = []
    console = Console(highlight=False)
    models = ModelRegistry()
    stamp = f"{int(ledger.clock()):x}"
    reports = ReplayReports(settings.data_dir / "replays")
    given = load_runs(ledger.store, run_ids=list(run_ids)) if run_ids else []
    for ref in EXAMPLES:
        agent = load_agent(ref)
        workflow = agent.workflow or ref
        if run_ids:
            recorded = [r for r in given if r.started.get("workflow") == workflow]
            console.rule(f"{workflow}: replaying the {len(recorded)} runs recorded above")
        else:
            module = __import__(ref.split(":")[0], fromlist=["inputs"])
            ids = record_examples(ledger, workspace, ref, module.inputs(runs, salt=stamp),
                                  prefix=f"demo-{stamp}-{workflow}", models=models,
                                  budget={"max_model_calls": 4})
            console.rule(f"{workflow}: {len(ids)} runs recorded live on sim-small-v1")
            recorded = load_runs(ledger.store, run_ids=ids)
        if not recorded:
            continue
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


def record_examples(
    ledger: Ledger,
    workspace: str,
    ref: str,
    inputs: Sequence[Mapping[str, Any]],
    *,
    prefix: str,
    models: ModelRegistry | None = None,
    budget: Mapping[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
) -> list[str]:
    """Run an example agent live on ``sim-small-v1`` once per input (run ids ``<prefix>-NNN``),
    recorded into ``ledger`` as it happens; approvals are decided by the demo's stand-in person.

    Returns the run ids, in order.
    """
    agent = load_agent(ref)
    run_ids = [f"{prefix}-{i:03d}" for i in range(len(inputs))]
    with StandInApprover(ledger, workspace, DEMO_APPROVER, demo_policy), \
            embedded_runtime(ledger, workspace, clock=clock or ledger.clock, event_ids=seq_event_id,
                             models=models or ModelRegistry(), model="sim-small-v1",
                             approval_timeout_s=STAND_IN_WAIT_S) as rt:
        for run_id, inp in zip(run_ids, inputs, strict=True):
            rt.run(agent, inp, run_id=run_id, budget=budget, labels={"route": "simulated/sim-small-v1"})
    return run_ids
