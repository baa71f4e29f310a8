"""`tacho project` and a reader that holds the analytics file: it waits, then says who holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[2]


def _run(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TACHO_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=120, check=check,
    )


def _ledger_with_new_events(data_dir: Path) -> tuple[int, int]:
    """A projected ledger that has grown since: (events projected, events not yet projected)."""
    first, second = data_dir / "a.jsonl", data_dir / "b.jsonl"
    _run(data_dir, "generate", str(first), "--runs", "10", "--seed", "1")
    _run(data_dir, "generate", str(second), "--runs", "10", "--seed", "2", "--workspace", "beta")
    _run(data_dir, "import", str(first))
    _run(data_dir, "project")
    _run(data_dir, "import", str(second))
    return len(first.read_bytes().splitlines()), len(second.read_bytes().splitlines())


def _events(data_dir: Path) -> int:
    con = duckdb.connect(str(data_dir / "analytics.duckdb"), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        con.close()


def test_project_waits_for_a_reader_to_let_go_of_the_file(tmp_path: Path) -> None:
    projected, new = _ledger_with_new_events(tmp_path)
    reader = duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True)
    env = {**os.environ, "TACHO_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "project", "--json"], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(2.5)  # started (≈ 1 s) and met the held file: waiting, not failed
        assert proc.poll() is None, proc.communicate()
    finally:
        reader.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["lag"] == 0
    assert _events(tmp_path) == projected + new


def test_project_names_the_holder_when_the_file_stays_busy_and_loses_nothing(tmp_path: Path) -> None:
    projected, new = _ledger_with_new_events(tmp_path)
    reader = duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True)
    try:
        t0 = time.monotonic()
        busy = _run(tmp_path, "project", check=False)
        waited = time.monotonic() - t0
    finally:
        reader.close()
    assert busy.returncode == 2
    assert "is in use by another process" in busy.stderr and "Traceback" not in busy.stderr
    assert waited >= 5  # it waited (25 tries, 0.2 s apart) before giving up
    assert _events(tmp_path) == projected  # nothing half-applied
    _run(tmp_path, "project")
    assert _events(tmp_path) == projected + new  # and nothing lost: the next run applies it all
