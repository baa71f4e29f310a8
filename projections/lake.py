"""The Parquet lake: event-grain tables exported hive-style (``workspace=/date=``, zstd).

Exports are incremental: ``_manifest.json`` records the ledger position exported so far and
every file written; the next export writes only rows after that position, into new files.
Files a crashed export left behind (not in the manifest) are removed before writing again, so
no row is ever exported twice.

A lake holds the rows of the runs it was created for (production runs unless asked otherwise,
``domain/origins.py``), each row with its run's ``origin`` and ``replay_id``; the manifest keeps
that selection and every later export into the lake must make the same one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import orjson

from domain.origins import PRODUCTION_RUNS, OriginError, OriginSelection
from projections.errors import LakeError
from projections.views import origin_condition, with_origin

LAKE_FORMAT = "tachograph.lake/1"
MANIFEST = "_manifest.json"
LAKE_TABLES = ("events", "model_calls", "tool_calls", "policy_evaluations", "approvals", "changes")


@dataclass
class ExportReport:
    """What one export wrote."""

    directory: str
    start: int
    end: int
    since: str | None
    runs: OriginSelection = PRODUCTION_RUNS
    files: list[dict[str, Any]] = field(default_factory=list)
    removed_orphans: int = 0

    @property
    def rows(self) -> int:
        """Rows written over all tables."""
        return sum(int(f["rows"]) for f in self.files)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "directory": self.directory,
            "from_position": self.start,
            "to_position": self.end,
            "since": self.since,
            **self.runs.to_json(),
            "files": self.files,
            "rows": self.rows,
            "removed_orphans": self.removed_orphans,
        }


def read_manifest(directory: Path) -> dict[str, Any]:
    """The lake's manifest (an empty one for a new lake)."""
    path = directory / MANIFEST
    if not path.exists():
        return {"format": LAKE_FORMAT, "position": 0, "origin": None, "exports": []}
    try:
        manifest: dict[str, Any] = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise LakeError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("format") != LAKE_FORMAT:
        raise LakeError(f"{path} is not a Tachograph lake manifest ({manifest.get('format')!r})")
    return manifest


def selected_rows(table: str, runs: OriginSelection = PRODUCTION_RUNS) -> str:
    """SQL of the rows of an event-grain table (``events`` or one of its views) of the selected
    runs, each with its run's ``origin`` and ``replay_id``; callers add ``AND`` conditions."""
    if table not in LAKE_TABLES:
        raise LakeError(f"no lake table {table!r}; one of {', '.join(LAKE_TABLES)}")
    source = with_origin("SELECT * FROM events") if table == "events" else f"SELECT * FROM {table}_all"
    return f"SELECT * FROM ({source}) WHERE {origin_condition(runs) or 'true'}"


def _lake_selection(directory: Path, manifest: dict[str, Any], runs: OriginSelection) -> None:
    """Refuse to add rows of other runs than the lake's own (its manifest's ``runs``)."""
    if "runs" not in manifest:
        if manifest.get("exports"):
            raise LakeError(
                f"{directory} was exported before runs had origins: it holds every run's rows, "
                "with no origin column; export into a new directory"
            )
        return
    try:
        held = OriginSelection(**manifest["runs"])
    except (OriginError, TypeError) as e:
        raise LakeError(f"{directory}/{MANIFEST} names no valid selection of runs: {e}") from e
    if held != runs:
        raise LakeError(
            f"{directory} holds {held.describe()}, not {runs.describe()}: export those into "
            "another directory"
        )


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def _known_files(manifest: dict[str, Any]) -> set[str]:
    return {f["path"] for e in manifest.get("exports", []) for f in e.get("files", [])}


def _remove_orphans(directory: Path, manifest: dict[str, Any]) -> int:
    known = _known_files(manifest)
    removed = 0
    for table in LAKE_TABLES:
        for path in (directory / table).glob("**/part-*.parquet"):
            rel = path.relative_to(directory).as_posix()
            if rel not in known:
                path.unlink()
                removed += 1
    return removed


def _make_private(directory: Path, file: Path) -> None:
    """The lake is as private as the ledger: files 0600, the directories down to them 0700."""
    os.chmod(file, 0o600)
    for parent in file.relative_to(directory).parents:
        os.chmod(directory / parent, 0o700)


def _check_directory(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        return
    if (directory / MANIFEST).exists():
        return
    foreign = [p.name for p in directory.iterdir() if p.name not in LAKE_TABLES]
    if foreign:
        raise LakeError(
            f"{directory} is not empty and holds no {MANIFEST}: refusing to write a lake there "
            f"(found {', '.join(sorted(foreign)[:5])})"
        )


def export_parquet(
    con: duckdb.DuckDBPyConnection,
    directory: Path,
    origin: str | None = None,
    since: date | None = None,
    clock: Any = time.time,
    runs: OriginSelection = PRODUCTION_RUNS,
) -> ExportReport:
    """Export the selected runs' rows projected since the last export into ``directory`` (see
    module doc; ``origin`` is the ledger's log origin)."""
    _check_directory(directory)
    manifest = read_manifest(directory)
    if manifest.get("origin") not in (None, origin):
        raise LakeError(
            f"{directory} holds a lake of ledger {manifest['origin']!r}, not {origin!r}"
        )
    _lake_selection(directory, manifest, runs)
    removed = _remove_orphans(directory, manifest)
    start = int(manifest.get("position", 0))
    rows = con.execute("SELECT notification_id FROM tracking WHERE application_name = 'ledger'").fetchall()
    end = int(rows[0][0]) if rows else 0
    report = ExportReport(str(directory), start, end, since.isoformat() if since else None, runs)
    report.removed_orphans = removed
    if end <= start:
        return report
    where = f"idx >= {start} AND idx < {end}"
    if since is not None:
        where += f" AND date >= DATE '{since.isoformat()}'"
    stem = f"part-{start:012d}-{end:012d}"
    for table in LAKE_TABLES:
        target = directory / table
        con.execute(
            f"COPY ({selected_rows(table, runs)} AND {where} ORDER BY idx) TO '{target.as_posix()}' "
            "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (workspace, date), "
            f"FILENAME_PATTERN '{stem}-{{i}}', OVERWRITE_OR_IGNORE)"
        ).fetchall()
        for path in sorted(target.glob(f"**/{stem}-*.parquet")):
            _make_private(directory, path)
            count = con.execute(
                "SELECT count(*) FROM read_parquet(?)", [path.as_posix()]
            ).fetchall()[0][0]
            report.files.append(
                {"table": table, "path": path.relative_to(directory).as_posix(), "rows": int(count)}
            )
    manifest["origin"] = origin
    manifest["runs"] = runs.to_json()
    manifest["position"] = end
    manifest.setdefault("exports", []).append(
        {
            "from": start,
            "to": end,
            "since": report.since,
            "at": clock(),
            "files": report.files,
        }
    )
    manifest["tables"] = list(LAKE_TABLES)
    _write_manifest(directory, manifest)
    return report


def lake_glob(directory: Path, table: str) -> str:
    """The glob reading one lake table (``read_parquet(glob, hive_partitioning = true)``)."""
    return (directory / table / "**" / "*.parquet").as_posix()
