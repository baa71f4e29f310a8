"""Stages of `tacho demo`, each from the area that owns it (agents, replay, policy, console, views)."""

from __future__ import annotations

from typing import Any

from rich.rule import Rule

from api.output import console
from api.settings import Settings
from domain.ledger import Ledger


def agents_stage(settings: Settings, ledger: Ledger, runs: int, via: str) -> dict[str, Any]:
    """The example agents run through the agent runtime (over Kafka, or embedded); a person
    decides their approvals through the API. Returns what ran, was decided and was ingested."""
    from api.demo_agents import agents_stage as run_stage

    return run_stage(settings, ledger, runs, via, console())


def later_stages(settings: Settings, ledger: Ledger, run_ids: list[str] | None = None,
                 policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay of the example agents' runs (``run_ids``: the first stage's) against a second
    model, a what-if of a stricter policy revision on them (``policy``: the first stage's
    policy), the console, then the analytics.

    Returns what each stage made, as JSON (no secrets).
    """
    c = console()
    c.print(Rule("4. replay the example agents' runs: fidelity, then a candidate model"))
    from replay.demo import run_demo

    replays = run_demo(ledger, settings, run_ids=run_ids or ())
    c.print(Rule("5. a stricter policy revision, tried on these runs before it is activated"))
    from api.demo_policy import what_if_stage

    what_if = what_if_stage(settings, ledger, run_ids or (), policy or {"reason": "no policy stage"}, c)
    console_demo = console_stage(settings, ledger)
    c.print(Rule("7. analytics: project the ledger into DuckDB and report"))
    from projections.demo import run_reports

    analytics = run_reports(settings, ledger.store)
    return {"replays": replays, "policy_what_if": what_if, "console": console_demo, "analytics": analytics}


def console_stage(settings: Settings, ledger: Ledger) -> dict[str, Any]:
    """API keys per role in workspace ``demo`` and runs waiting for people; how to open the console.

    Returns the keys file, key ids by role (never the secrets) and the runs recorded.
    """
    c = console()
    c.print(Rule("6. the operator console: approvals, reverts, kill switches"))
    from api.console.demo import run_console_demo

    demo = run_console_demo(settings, ledger, c)
    return {"keys_file": str(demo.keys_path), "created_keys": demo.created_keys,
            "key_ids": demo.key_ids, "pending_approval_runs": demo.pending,
            "open_runs": demo.open_runs, "completed_runs": demo.completed, "halted_runs": demo.halted}
