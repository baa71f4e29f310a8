"""`tacho demo`: the main job end to end on embedded defaults, narrated for a newcomer."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.rule import Rule

from api import demo_steps
from api.bootstrap import build_ledger
from api.cli_ledger import verify_store
from api.output import JsonOpt, console, print_json
from api.settings import Settings
from domain.errors import ConfigError
from domain.evidence import build_evidence, verify_evidence
from domain.ledger import Ledger


def _verify_stage(ledger: Ledger) -> dict[str, Any]:
    c = console()
    store = ledger.store
    keys = [k for k in {store.get_meta("initial_vkey"), ledger.signer.vkey} if k]
    result = verify_store(store, keys)
    status = "[green]OK[/]" if result.ok else f"[red]BREACH[/] at {result.position}: {result.reason}"
    c.print(
        f"verify: {status} — {result.entries} entries, {result.runs} runs, "
        f"{result.checkpoints} signed checkpoints, root {result.root}",
        soft_wrap=True,
    )
    if not result.ok:
        return {"result": result.to_json(), "checkpoint": None, "verifier_key": ledger.signer.vkey}
    cp = ledger.checkpoint(force=True)
    assert cp is not None
    c.print("latest signed checkpoint (C2SP signed note; keep a copy outside the system):")
    c.print(cp.note.rstrip("\n"), soft_wrap=True, markup=False, style="cyan")
    return {"result": result.to_json(), "checkpoint": cp.note, "verifier_key": ledger.signer.vkey}


def _evidence_stage(ledger: Ledger, vkey: str, out_dir: Path) -> dict[str, Any] | None:
    c = console()
    entries = list(ledger.store.entries(0, 200))
    run = next((e for e in entries if e.event_type == "run.started"), None)
    if run is None or run.workspace is None or run.run_id is None:
        c.print("no run to bundle")
        return None
    bundle = build_evidence(ledger, run.workspace, run.run_id)
    path = out_dir / f"evidence-{run.run_id}.json"
    path.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    result = verify_evidence(orjson.loads(path.read_bytes()), [vkey])
    state = "[green]OK[/]" if result.ok else f"[red]INVALID[/] {result.reason}"
    c.print(
        f"evidence bundle {path}: {state} — run {result.run_id} ({result.workspace}), "
        f"{result.entries} entries proven in the signed tree of size {result.tree_size}, "
        f"outcome {result.outcome}"
    )
    c.print(f"  check it anywhere: tacho verify-evidence {path} --trusted-key '{vkey}'", soft_wrap=True)
    return {"file": str(path), "result": result.to_json()}


def cmd_demo(
    runs: Annotated[int, typer.Option(min=1, help="example agent runs (split between the two example agents)")] = 40,
    via: Annotated[str, typer.Option(help="kafka (the dev broker unless TACHO_KAFKA_BOOTSTRAP) or embedded")] = "kafka",
    json_out: JsonOpt = False,
) -> None:
    """Run the main job on embedded defaults: agents → ledger → verify → evidence → replay →
    policy what-if → views.

    The example agents run through the agent runtime over Kafka (or embedded) under a small policy
    Open Policy Agent decides (opa found, or built once with Go; without either the demo says so
    and runs without it), a person deciding their approvals through the API. With --json the
    narrative goes to stderr and stdout gets one JSON document of what each stage did (counts,
    verification, checkpoint, evidence, replays, policy decisions and what-if, reports; never a
    secret).
    """
    from api.demo_agents import VIAS

    if via not in VIAS:
        raise ConfigError(f"--via must be {' or '.join(VIAS)}, not {via!r}")
    settings = Settings()
    with contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext():
        summary = _demo(settings, runs, via)
    if json_out:
        print_json(summary)
    if not summary["verify"]["result"]["ok"]:
        raise typer.Exit(1)


def _demo(settings: Settings, runs: int, via: str) -> dict[str, Any]:
    c = console()
    c.print(Rule(f"Tachograph demo — data in {settings.data_dir.resolve()}"))
    ledger = build_ledger(settings)
    summary: dict[str, Any] = {"data_dir": str(settings.data_dir.resolve())}
    over = "over Kafka" if via == "kafka" else "embedded"
    c.print(Rule(f"1. the example agents run through the agent runtime, {over}"))
    summary["agents"] = demo_steps.agents_stage(settings, ledger, runs, via)
    c.print(Rule("2. verify the whole ledger"))
    summary["verify"] = _verify_stage(ledger)
    if not summary["verify"]["result"]["ok"]:
        return summary
    c.print(Rule("3. one run's evidence bundle, verified offline"))
    summary["evidence"] = _evidence_stage(ledger, summary["verify"]["verifier_key"], settings.data_dir)
    summary.update(demo_steps.later_stages(settings, ledger, summary["agents"]["runs"]["run_ids"],
                                           summary["agents"]["policy"]))
    final = ledger.checkpoint(force=True)  # the later stages appended; this covers them too
    summary["ledger"] = {"entries": ledger.store.size(), "checkpoint": final.note if final else None}
    c.print(Rule("done"))
    return summary


def register(app: typer.Typer) -> None:
    """Add `tacho demo`."""
    app.command("demo")(cmd_demo)
