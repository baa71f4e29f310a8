"""Analytics snapshots: read-only copies of the analytics file for readers in other processes.

The projector is the only process that opens its DuckDB file. With ``tacho project --follow
--publish DIR`` it checkpoints the file and copies it into ``DIR`` under a new name
(``analytics-<position>.duckdb``), then points ``CURRENT`` at it (written aside and renamed), so
a reader — the API, the console, in another container — opens a whole file that no process
writes, at one ledger position: no lock is shared and a reader never blocks the projector.
The last few snapshots are kept, so a reader that read ``CURRENT`` just before a newer one was
published still finds its file; one that loses that race reads ``CURRENT`` again.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from projections.duckdb_tracking import DuckDBTrackingRecorder
from projections.errors import AnalyticsBusyError, AnalyticsMissingError, ProjectionError
from projections.sqlview import LEDGER

CURRENT = "CURRENT"
KEEP = 3  # snapshots kept: the current one and the two before it
_NAME = re.compile(r"^analytics-(\d{12})\.duckdb$")


def snapshot_name(position: int) -> str:
    """File name of the snapshot at ledger ``position``."""
    return f"analytics-{position:012d}.duckdb"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def snapshot_position(path: Path) -> int:
    """The ledger position projected in the analytics file at ``path`` (read-only)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        position = DuckDBTrackingRecorder(con).max_tracking_id(LEDGER)
    except duckdb.CatalogException:
        position = None
    finally:
        con.close()
    if position is None:
        raise ProjectionError(f"{path} holds no projection position")
    return int(position)


def publish(con: duckdb.DuckDBPyConnection, source: Path, directory: Path, position: int,
            keep: int = KEEP) -> Path:
    """Checkpoint ``con`` (the projector's connection to ``source``) and publish a copy of
    ``source`` at ``position`` in ``directory``; returns the snapshot's path.

    The caller must not write through ``con`` until this returns.
    """
    if keep < 2:
        raise ProjectionError(f"keep at least 2 snapshots, not {keep}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    con.execute("CHECKPOINT")  # every committed row in the file itself, the WAL empty
    target = directory / snapshot_name(position)
    tmp = directory / f".{target.name}.tmp"
    with open(source, "rb") as src, os.fdopen(
        os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb"
    ) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    try:
        copied = snapshot_position(tmp)
    except (duckdb.Error, ProjectionError) as e:
        tmp.unlink(missing_ok=True)
        raise ProjectionError(f"the snapshot copied from {source} does not open: {e}") from e
    if copied != position:
        tmp.unlink(missing_ok=True)
        raise ProjectionError(
            f"the snapshot copied from {source} is at position {copied}, not {position}"
        )
    os.replace(tmp, target)
    _write_atomic(directory / CURRENT, (target.name + "\n").encode())
    _fsync_dir(directory)
    _prune(directory, keep)
    return target


def _prune(directory: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` snapshots, and temp files a crash left behind."""
    named = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    for old in named[:-keep]:
        old.unlink(missing_ok=True)
    for tmp in directory.glob(".analytics-*.duckdb.tmp"):
        if time.time() - tmp.stat().st_mtime > 3600:  # not one being written now
            tmp.unlink(missing_ok=True)


def current(directory: Path) -> Path:
    """The newest published snapshot in ``directory`` (AnalyticsMissingError if none)."""
    try:
        name = (directory / CURRENT).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise AnalyticsMissingError(
            f"no analytics snapshot in {directory}: run `tacho project --follow --publish "
            f"{directory}` (the projector publishes one after its first projection)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProjectionError(f"{directory / CURRENT} is unreadable: {e}") from e
    if not _NAME.match(name):
        raise ProjectionError(f"{directory / CURRENT} names no snapshot file: {name[:80]!r}")
    return directory / name


def open_current(directory: Path, attempts: int = 5,
                 sleep: Callable[[float], None] = time.sleep) -> duckdb.DuckDBPyConnection:
    """A read-only UTC connection to the newest snapshot, reading ``CURRENT`` again when the
    file it named was pruned in between."""
    for attempt in range(attempts):
        path = current(directory)
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.IOException as e:
            if path.exists() or attempt == attempts - 1:
                raise AnalyticsBusyError(f"cannot open the analytics snapshot {path}: {e}") from e
            sleep(0.05)
            continue
        con.execute("SET TimeZone = 'UTC'")
        return con
    raise AnalyticsBusyError(f"the analytics snapshots in {directory} kept changing")  # pragma: no cover


def open_for_reading(data_dir: Path, snapshots: Path | None) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the analytics: the newest snapshot in ``snapshots`` when given
    (``TACHO_ANALYTICS_DIR``), else ``data_dir``'s analytics file (waiting up to 4 s while the
    projector holds it). AnalyticsMissingError when there is nothing to read yet."""
    if snapshots is not None:
        return open_current(snapshots)
    from projections.demo import analytics_path
    from projections.projector import connect

    path = analytics_path(data_dir)
    if not path.exists():
        raise AnalyticsMissingError(
            f"no analytics file at {path}: run `tacho project` (or `tacho project --follow`) first"
        )
    return connect(path, read_only=True, retries=20)
