"""The Kafka stage of ``tacho demo``: simulated agent services → Kafka → one ingest worker → ledger."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from domain.ledger import AppendReport, Ledger
from ingest.devbroker import DevBroker, ensure_topic
from ingest.halts import LedgerHalts
from ingest.simulate import PublishedSummary, run_simulated_agents
from ingest.worker import IngestWorker, WorkerConfig, WorkerSummary
from tachograph.halts import HaltSource


class KafkaSettings(Protocol):
    """The settings the demo reads (``api.settings.Settings`` has them)."""

    kafka_bootstrap: str | None
    topic: str
    data_dir: Path


def _progress(what: str, console: Console) -> Progress:
    return Progress(
        TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )


def publish_and_ingest(
    ledger: Ledger,
    bootstrap: str,
    topic: str,
    runs: int,
    seed: int,
    group: str,
    console: Console,
    halts: HaltSource | None = None,
) -> tuple[PublishedSummary, WorkerSummary]:
    """Publish ``runs`` simulated runs (halted workflows refused), then ingest every event."""
    ensure_topic(bootstrap, topic, partitions=3)
    with _progress("agents publishing", console) as bar:
        task = bar.add_task("publish", total=runs)
        published = run_simulated_agents(
            bootstrap, topic, runs, seed, progress=lambda n: bar.advance(task, n), halts=halts
        )
    cfg = WorkerConfig(bootstrap=bootstrap, topic=topic, group=group, until_idle=5.0,
                       assign=True, parallel=False)
    worker: IngestWorker
    with _progress("ingesting", console) as bar:
        task = bar.add_task("ingest", total=published.events)

        def on_batch(report: AppendReport, summary: WorkerSummary) -> None:
            bar.update(task, completed=summary.accepted + summary.duplicates + summary.quarantined)
            if summary.consumed >= published.events:
                worker.stop("all published events ingested")

        worker = IngestWorker(ledger, cfg, on_batch=on_batch)
        ingested = worker.run()
    return published, ingested


def print_summary(published: PublishedSummary, ingested: WorkerSummary, console: Console) -> None:
    """Two small tables: what the agents published, what the worker did."""
    t = Table(title="agents published (through the SDK, budgets enforced)", show_edge=False)
    for col in ("runs", "events", "outcomes", "budget breaches", "halted", "spend (USD)"):
        t.add_column(col)
    t.add_row(
        str(published.runs), str(published.events),
        ", ".join(f"{k} {v}" for k, v in sorted(published.outcomes.items())),
        ", ".join(f"{k} {v}" for k, v in sorted(published.budget_exceeded.items())) or "none",
        ", ".join(f"{k} {v}" for k, v in sorted(published.halted.items())) or "none",
        str(published.cost_usd),
    )
    console.print(t)
    rate = ingested.consumed / max(ingested.seconds, 1e-9)
    console.print(
        f"worker: consumed {ingested.consumed:,}, accepted [green]{ingested.accepted:,}[/], "
        f"duplicates absorbed {ingested.duplicates:,}, quarantined {ingested.quarantined:,} "
        f"in {ingested.seconds:.1f}s ({rate:,.0f}/s); ledger size {ingested.ledger_size:,}, "
        f"signed checkpoint at {ingested.checkpoint_size:,}"
    )


def run_kafka_demo(
    settings: KafkaSettings, ledger: Ledger, runs: int = 400, seed: int = 7
) -> dict[str, Any]:
    """Start the dev broker unless Kafka is configured, publish, ingest, print a summary.

    Returns what was published and what the worker did (as JSON).
    """
    console = Console(highlight=False, file=sys.stdout)
    broker: DevBroker | None = None
    bootstrap = settings.kafka_bootstrap
    if not bootstrap:
        t0 = time.monotonic()
        broker = DevBroker().start()
        bootstrap = broker.bootstrap
        console.print(
            f"no Kafka configured: started the dev broker (Tansu, in memory) on {bootstrap} "
            f"in {time.monotonic() - t0:.1f}s"
        )
    # a fresh dev broker starts its offsets from 0 again, so it gets its own consumer group
    group = f"demo-{broker.cluster_id}" if broker is not None else "tachograph-ingest"
    try:
        published, ingested = publish_and_ingest(
            ledger, bootstrap, settings.topic, runs, seed, group, console,
            halts=LedgerHalts(ledger.store),
        )
    finally:
        if broker is not None:
            broker.stop()
    print_summary(published, ingested, console)
    return {"via": "kafka", "bootstrap": bootstrap, "dev_broker": broker is not None,
            "published": published.to_json(), "ingested": ingested.to_json()}
