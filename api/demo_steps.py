"""Later stages of `tacho demo`, each from the area that owns it (Kafka, views, replay, console)."""

from __future__ import annotations

import importlib.util

from rich.rule import Rule

from api.output import console
from api.settings import Settings
from domain.ledger import Ledger


def kafka_stage(settings: Settings, ledger: Ledger, runs: int, seed: int) -> bool:
    """Simulated agent services publish through the SDK onto Kafka; a worker ingests them."""
    if importlib.util.find_spec("ingest.demo") is None:
        return False
    from ingest.demo import run_kafka_demo

    return bool(run_kafka_demo(settings, ledger, runs=runs, seed=seed))


def later_stages(settings: Settings, ledger: Ledger) -> None:
    """Replay of example agents against a second model, the console, then the analytics."""
    c = console()
    c.print(Rule("4. example agents run live, then replay against a candidate model"))
    from replay.demo import run_demo

    run_demo(ledger, settings)
    console_stage(settings, ledger)
    c.print(Rule("6. analytics: project the ledger into DuckDB and report"))
    from projections.demo import run_reports

    run_reports(settings, ledger.store)


def console_stage(settings: Settings, ledger: Ledger) -> None:
    """API keys per role in workspace ``demo`` and runs waiting for people; how to open the console."""
    c = console()
    c.print(Rule("5. the operator console: approvals, reverts, kill switches"))
    from api.console.demo import run_console_demo

    run_console_demo(settings, ledger, c)
