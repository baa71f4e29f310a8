"""Running the `tacho` command as a user does: a real subprocess on a data directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
TACHO = [sys.executable, "-m", "api.cli"]


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "TACHO_DATA_DIR": str(data_dir), "COLUMNS": "200"}


def tacho(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `tacho ARGS` to completion; with ``check``, a non-zero exit fails with its output."""
    proc = subprocess.run(
        [*TACHO, *args], env=_env(data_dir), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tacho {args} exited {proc.returncode}: {proc.stdout}\n{proc.stderr}")
    return proc


def start_tacho(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    """Start `tacho ARGS` in the background, its output on pipes (text)."""
    return subprocess.Popen(
        [*TACHO, *args], env=_env(data_dir), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def projected_events(data_dir: Path) -> int:
    """Rows in the analytics file's ``events`` table (read-only; fails if a writer holds it)."""
    con = duckdb.connect(str(data_dir / "analytics.duckdb"), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        con.close()
