"""Ingest commands: ``tacho ingest`` (the Kafka worker) and ``tacho dev-broker``."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Annotated

import typer
from rich.live import Live
from rich.text import Text

from api.bootstrap import build_ledger, witness_pusher
from api.output import JsonOpt, console, err_console, print_json
from api.settings import Settings
from domain.errors import ConfigError
from domain.ledger import AppendReport
from ingest.devbroker import DevBroker, ensure_topic
from ingest.membership import claim_instance
from ingest.metrics import IngestMetrics
from ingest.worker import IngestWorker, WorkerConfig, WorkerSummary


def _status(s: WorkerSummary, t0: float) -> Text:
    rate = s.consumed / max(time.monotonic() - t0, 1e-9)
    return Text.from_markup(
        f"[bold]ingesting[/] consumed {s.consumed:,}  accepted [green]{s.accepted:,}[/]  "
        f"duplicates {s.duplicates:,}  quarantined [red]{s.quarantined:,}[/]  held {s.held:,}  "
        f"ledger {s.ledger_size:,}  ({rate:,.0f}/s)"
    )


def cmd_ingest(
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka HOST:PORT (default: TACHO_KAFKA_BOOTSTRAP)")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="topic (default: TACHO_TOPIC)")] = None,
    group: Annotated[str, typer.Option(help="consumer group; offsets are kept in the ledger")] = "tachograph-ingest",
    until_idle: Annotated[
        float | None, typer.Option(help="stop after this many seconds without messages")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="max records per ledger transaction")] = 2000,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve Prometheus /metrics on this port")
    ] = None,
    session_timeout_ms: Annotated[
        int | None,
        typer.Option(min=1000, help="Kafka group session timeout: a worker that dies and does not "
                     "come back loses its partitions to the others after it (default 10000)"),
    ] = None,
    assign: Annotated[
        bool, typer.Option("--assign", help="read every partition without joining a group")
    ] = False,
    connect_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="seconds to wait for the first connection to Kafka before giving up"),
    ] = 30.0,
    join_timeout: Annotated[
        float,
        typer.Option(min=0.0, help="exit with an error if a group join takes longer than this "
                     "many seconds (0: wait for ever)"),
    ] = 60.0,
    instance_id: Annotated[
        str | None,
        typer.Option(help="this worker's stable name in its group; restarted with the same one it "
                     "rejoins as the same member and resumes at once (default: TACHO_INGEST_"
                     "INSTANCE_ID, else <host name>-<n> with the first n no running worker holds)"),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="log partition assignments and kafka-python's own messages"),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Consume agent events from Kafka into the ledger, exactly once (Ctrl-C stops cleanly)."""
    settings = Settings()
    bootstrap = bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        raise ConfigError(
            "no Kafka configured: pass --bootstrap HOST:PORT or set TACHO_KAFKA_BOOTSTRAP "
            "(for development, `tacho dev-broker` starts one)"
        )
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # the worker reports Kafka failures in its own words (retrying, or giving up with the
        # broker's address); kafka-python's per-connection errors would only repeat them
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    consumer_config: dict[str, int] = {"bootstrap_timeout_ms": round(connect_timeout * 1000)}
    if session_timeout_ms is not None:
        consumer_config["session_timeout_ms"] = session_timeout_ms
        consumer_config["heartbeat_interval_ms"] = max(100, session_timeout_ms // 3)
    claim = None if assign else claim_instance(
        settings.data_dir / "ingest", group, instance_id or settings.ingest_instance_id
    )
    config = WorkerConfig(
        bootstrap=bootstrap,
        topic=topic or settings.topic,
        group=group,
        batch=batch,
        until_idle=until_idle,
        assign=assign,
        join_timeout_s=join_timeout,
        consumer_config=consumer_config,
        instance_id=claim.instance_id if claim else None,
        member_file=claim.member_file if claim else None,
    )
    try:
        _run(config, settings, metrics_port, json_out, bootstrap)
    finally:
        if claim is not None:
            claim.release()


def _run(config: WorkerConfig, settings: Settings, metrics_port: int | None, json_out: bool,
         bootstrap: str) -> None:
    """Run the worker until it stops; print its summary."""
    ledger = build_ledger(settings)
    metrics = IngestMetrics()
    server = metrics.serve(metrics_port) if metrics_port is not None else None
    t0 = time.monotonic()
    live = Live(
        _status(WorkerSummary(), t0),
        console=err_console(),
        transient=True,
        auto_refresh=False,
    )
    show = sys.stderr.isatty() and not json_out

    def on_batch(_report: AppendReport, summary: WorkerSummary) -> None:
        if show:
            live.update(_status(summary, t0), refresh=True)

    worker = IngestWorker(ledger, config, metrics, on_batch=on_batch)
    worker.install_signal_handlers()
    where = ("assigned partitions" if config.assign
             else f"group {config.group} as instance {config.instance_id}")
    err_console().print(
        f"tacho ingest: started (pid {os.getpid()}), consuming {config.topic} from {bootstrap} "
        f"({where}); SIGTERM or Ctrl-C stops it after the current batch",
        highlight=False, soft_wrap=True)
    pusher = witness_pusher(settings, ledger)  # in its own threads: never holds up ingest
    if pusher is not None:
        pusher.start()
    try:
        if show:
            with live:
                summary = worker.run()
        else:
            summary = worker.run()
    finally:
        if pusher is not None:
            last = ledger.store.latest_checkpoint()
            if last is not None:
                pusher.wait_settled(last.size, settings.witness_wait_s)
            pusher.stop()
        if server is not None:
            server.shutdown()
        ledger.store.close()
    if json_out:
        print_json(summary.to_json())
        return
    c = console()
    c.print(
        f"ingested from [bold]{config.topic}[/] ({config.group}): consumed {summary.consumed:,}, "
        f"accepted [green]{summary.accepted:,}[/], duplicates {summary.duplicates:,}, "
        f"quarantined [red]{summary.quarantined:,}[/], held {summary.held:,} "
        f"in {summary.seconds:.1f}s; ledger size {summary.ledger_size:,}, "
        f"checkpoint at {summary.checkpoint_size:,} (stopped: {summary.stopped_by})"
    )
    if summary.quarantined:
        c.print("  see `tacho quarantine list`")


def cmd_dev_broker(
    port: Annotated[int | None, typer.Option(help="port (default: a free one)")] = None,
    topic: Annotated[str | None, typer.Option(help="topic to create")] = None,
    partitions: Annotated[int, typer.Option(min=1)] = 3,
    json_out: JsonOpt = False,
) -> None:
    """Run the embedded development broker (Tansu, in memory) until Ctrl-C."""
    topic = topic or Settings().topic
    broker = DevBroker(port).start()
    try:
        ensure_topic(broker.bootstrap, topic, partitions)
        if json_out:
            print_json({"bootstrap": broker.bootstrap, "topic": topic, "partitions": partitions})
        else:
            console().print(
                f"dev broker on [bold]{broker.bootstrap}[/] (topic {topic}, {partitions} partitions); "
                f"export TACHO_KAFKA_BOOTSTRAP={broker.bootstrap}; Ctrl-C stops it"
            )
        assert broker.proc is not None
        with contextlib.suppress(KeyboardInterrupt):
            broker.proc.wait()
    finally:
        broker.stop()


def register(app: typer.Typer) -> None:
    """Add the ingest commands to the CLI."""
    app.command("ingest")(cmd_ingest)
    app.command("dev-broker")(cmd_dev_broker)
