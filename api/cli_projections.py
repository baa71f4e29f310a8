"""Projection commands: ``tacho project``, ``tacho export parquet``, ``tacho report ...``."""

from __future__ import annotations

import signal
import sys
import time
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from api.bootstrap import open_store
from api.cli_ledger import progress_bar
from api.output import JsonOpt, console, err_console, print_json
from api.settings import Settings
from domain.origins import ALL, ORIGINS, OriginSelection
from projections.demo import analytics_path
from projections.errors import ReportError
from projections.lake import export_parquet
from projections.projector import DEFAULT_BATCH, ProjectionStatus, Projector, open_projector
from projections.reports import FORMATS, REPORTS, parse_by, rich_table, run_report, to_csv
from projections.snapshots import publish as publish_snapshot

# Waits (0.2 s apart) for an analytics file another process holds: a report or a one-off
# projection waits up to 5 s; the follower, which runs unattended, up to 10 s at each open.
BUSY_RETRIES = 25
FOLLOW_BUSY_RETRIES = 50

export_app = typer.Typer(help="Export projected tables.", no_args_is_help=True)

OriginOpt = Annotated[str | None, typer.Option(
    "--origin", help=f"runs counted: {' | '.join((*ORIGINS, ALL))} (default production)")]
ReplayIdOpt = Annotated[str | None, typer.Option(
    "--replay-id", help="only the runs of this replay (origin replay)")]


def _print_status(status: ProjectionStatus, json_out: bool) -> None:
    if json_out:
        print_json(status.to_json())
        return
    rate = status.to_json()["entries_per_second"]
    console().print(
        ("rebuilt; " if status.rebuilt else "")
        + f"applied {status.applied:,} entries ({status.events:,} events) in {status.seconds:.2f}s"
        + (f" ({rate:,}/s)" if rate else "")
        + f"; position {status.position:,} of {status.ledger_size:,}, lag {status.lag:,}"
    )


class _Publisher:
    """Publishes analytics snapshots into a directory (``--publish``), at most every ``every`` s."""

    def __init__(self, directory: Path | None, every: float) -> None:
        self.directory = directory
        self.every = every
        self.position = -1  # published so far
        self.at = float("-inf")

    def due(self, position: int, force: bool = False) -> bool:
        """Whether the projection at ``position`` should be published now."""
        if self.directory is None or position == self.position:
            return False
        return force or time.monotonic() - self.at >= self.every

    def publish(self, projector: Projector, path: Path, position: int) -> None:
        """Publish the projection at ``position`` (the caller holds ``projector`` open)."""
        assert self.directory is not None
        target = publish_snapshot(projector.con, path, self.directory, position)
        self.position, self.at = position, time.monotonic()
        err_console().print(f"published {target} (position {position:,})")


def _follow(
    settings: Settings, batch_size: int, interval: float, json_out: bool, position: int,
    publisher: _Publisher,
) -> None:
    """Keep the projection current from ``position``, releasing the DuckDB file between polls.

    The file is opened for writing only when the ledger has grown past ``position`` (or a
    snapshot is due), so while the follower idles (right after the first projection too)
    readers are never locked out. SIGTERM and SIGINT stop it after publishing what is left.
    """
    store = open_store(settings)
    path = analytics_path(settings.data_dir)
    stop = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    out = err_console()
    while True:
        size = store.size()
        if size > position or publisher.due(position, force=stop):
            with open_projector(store, path, batch_size, retries=FOLLOW_BUSY_RETRIES) as p:
                status = p.catch_up() if not stop else ProjectionStatus(position, size)
                position = status.position
                if publisher.due(position, force=stop):
                    publisher.publish(p, path, position)
        else:  # nothing new: leave the file alone, so readers are not locked out while idle
            status = ProjectionStatus(position=position, ledger_size=size)
        if stop:
            return
        if json_out:
            sys.stdout.write(
                __import__("orjson").dumps({"metric": "projection", **status.to_json()}).decode()
                + "\n"
            )
            sys.stdout.flush()
        elif status.applied:
            out.print(
                f"applied {status.applied:,}; position {status.position:,}, lag {status.lag:,}"
            )
        deadline = time.monotonic() + interval
        while not stop and time.monotonic() < deadline:
            time.sleep(min(0.05, interval))


def cmd_project(
    follow: Annotated[bool, typer.Option("--follow", help="keep projecting as the ledger grows")] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="recreate everything from the ledger")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="ledger entries per DuckDB transaction")] = DEFAULT_BATCH,
    interval: Annotated[float, typer.Option(min=0.01, help="seconds between polls with --follow")] = 1.0,
    publish: Annotated[Path | None, typer.Option(
        "--publish", file_okay=False,
        help="publish read-only snapshots of the analytics into this directory, for "
        "TACHO_ANALYTICS_DIR of the API (after the projection, and with --follow as it grows)")] = None,
    publish_every: Annotated[float, typer.Option(
        min=0.0, help="with --publish --follow: seconds at least between two snapshots")] = 30.0,
    json_out: JsonOpt = False,
) -> None:
    """Project the ledger into TACHO_DATA_DIR/analytics.duckdb (position kept with the rows)."""
    settings = Settings()
    store = open_store(settings)
    retries = FOLLOW_BUSY_RETRIES if follow else BUSY_RETRIES
    publisher = _Publisher(publish, publish_every)
    path = analytics_path(settings.data_dir)
    with open_projector(store, path, batch_size, retries=retries) as projector:
        if rebuild:
            projector.create()
        else:
            projector.ensure()
        total = max(store.size() - projector.position(), 0)
        with progress_bar(total, "projecting") as bar:
            task = bar.add_task("project", total=total)
            status = projector.catch_up(lambda n: bar.advance(task, n))
        status.rebuilt = status.rebuilt or rebuild
        if publisher.due(status.position, force=True):
            publisher.publish(projector, path, status.position)
    _print_status(status, json_out)
    if follow:
        _follow(settings, batch_size, interval, json_out, status.position, publisher)


def cmd_export_parquet(
    directory: Annotated[Path, typer.Argument(file_okay=False, help="the lake directory")],
    since: Annotated[str | None, typer.Option(help="only events on/after this date (YYYY-MM-DD)")] = None,
    origin: OriginOpt = None,
    replay_id: ReplayIdOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export event-grain tables of production runs (or --origin) as Parquet (hive
    workspace=/date=, zstd), incrementally."""
    runs = OriginSelection.parse(origin, replay_id)
    day = None
    if since:
        try:
            day = date.fromisoformat(since)
        except ValueError as e:
            raise ReportError(f"--since must be a date like 2026-11-02, got {since!r}") from e
    settings = Settings()
    store = open_store(settings)
    with open_projector(store, analytics_path(settings.data_dir), retries=BUSY_RETRIES) as projector:
        projector.catch_up()
        report = export_parquet(projector.con, directory, store.get_meta("origin"), day, runs=runs)
    if json_out:
        print_json(report.to_json())
        return
    console().print(
        f"exported {report.rows:,} rows of {runs.describe()} in {len(report.files)} files "
        f"(positions {report.start:,}..{report.end:,}) to {directory}"
        + (f"; removed {report.removed_orphans} orphan files" if report.removed_orphans else "")
    )


def _report(name: str):  # type: ignore[no-untyped-def]
    def command(
        by: Annotated[str | None, typer.Option(help="comma-separated dimensions")] = None,
        since: Annotated[str | None, typer.Option(help="runs started on/after (YYYY-MM-DD)")] = None,
        fmt: Annotated[str, typer.Option("--format", help="table | json | csv | png")] = "table",
        output: Annotated[Path | None, typer.Option("-o", "--output", help="write to a file")] = None,
        origin: OriginOpt = None,
        replay_id: ReplayIdOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        runs = OriginSelection.parse(origin, replay_id)
        if json_out:
            fmt = "json"
        if fmt not in FORMATS:
            raise ReportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt == "png" and name != "cost-per-outcome":
            raise ReportError("--format png is available for cost-per-outcome")
        if fmt == "png" and output is None:
            raise ReportError("--format png needs -o FILE.png")
        settings = Settings()
        store = open_store(settings)
        with open_projector(store, analytics_path(settings.data_dir), retries=BUSY_RETRIES) as projector:
            projector.catch_up()
            report = run_report(projector.con, name, parse_by(by, name), since, runs)
        if fmt == "png":
            from projections.chart import cost_chart

            assert output is not None
            cost_chart(report, output)
            console().print(f"wrote {output}")
            return
        if fmt == "table":
            if output is not None:
                from rich.console import Console

                with output.open("w") as f:
                    Console(file=f, width=160).print(rich_table(report))
            else:
                console().print(rich_table(report))
            return
        if fmt == "json":
            if output is not None:
                import orjson

                output.write_bytes(
                    orjson.dumps(report.to_json(), default=str, option=orjson.OPT_INDENT_2)
                )
            else:
                print_json(report.to_json())
            return
        text = to_csv(report)
        if output is not None:
            output.write_text(text)
        else:
            sys.stdout.write(text)

    command.__doc__ = (f"{REPORTS[name].title} of production runs, or --origin / --replay-id "
                       f"(default --by {','.join(REPORTS[name].default_by)}).")
    return command


def cmd_report_replay(
    replay_id: Annotated[str, typer.Argument(help="the replay's id (tacho replay list)")],
    json_out: JsonOpt = False,
) -> None:
    """A replay's before/after figures, recomputed from its runs in the ledger (origin replay)."""
    from rich.table import Table

    from replay.recomputed import recomputed_summary

    OriginSelection.parse(replay_id=replay_id)  # a malformed id is an error naming it
    settings = Settings()
    store = open_store(settings)
    with open_projector(store, analytics_path(settings.data_dir), retries=BUSY_RETRIES) as projector:
        projector.catch_up()
        summary = recomputed_summary(projector.con, replay_id)
    if json_out:
        print_json({"replay_id": replay_id, "summary": summary})
        return
    table = Table(title=f"Replay {replay_id}: {summary['runs']} runs, from the ledger", title_justify="left")
    for col in ("figure", "before", "after"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for name, before in summary["before"].items():
        after = summary["after"][name]
        table.add_row(name.replace("_", " "), *("—" if v is None else str(v) for v in (before, after)))
    console().print(table)
    console().print(f"outcome change rate {summary['outcome_change_rate']}, "
                    f"cost increase {summary['cost_increase']}")


def register(app: typer.Typer) -> None:
    """Add the projection commands to the CLI."""
    app.command("project")(cmd_project)
    export_app.command("parquet")(cmd_export_parquet)
    app.add_typer(export_app, name="export")
    report_app = typer.Typer(help="Analytics reports (cost, violations, budgets, approvals).",
                             no_args_is_help=True)
    for name in REPORTS:
        report_app.command(name)(_report(name))
    report_app.command("replay")(cmd_report_replay)
    app.add_typer(report_app, name="report")
