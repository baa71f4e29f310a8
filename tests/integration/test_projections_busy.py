"""`tacho project` and a reader that holds the analytics file: it waits, then says who holds it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb

from tests.cli_support import projected_events, start_tacho, tacho


def _ledger_with_new_events(data_dir: Path) -> tuple[int, int]:
    """A projected ledger that has grown since: (events projected, events not yet projected)."""
    first, second = data_dir / "a.jsonl", data_dir / "b.jsonl"
    tacho(data_dir, "generate", str(first), "--runs", "10", "--seed", "1")
    tacho(data_dir, "generate", str(second), "--runs", "10", "--seed", "2", "--workspace", "beta")
    tacho(data_dir, "import", str(first))
    tacho(data_dir, "project")
    tacho(data_dir, "import", str(second))
    return len(first.read_bytes().splitlines()), len(second.read_bytes().splitlines())


def test_project_waits_for_a_reader_to_let_go_of_the_file(tmp_path: Path) -> None:
    projected, new = _ledger_with_new_events(tmp_path)
    reader = duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True)
    proc = start_tacho(tmp_path, "project", "--json")
    try:
        time.sleep(2.5)  # started (≈ 1 s) and met the held file: waiting, not failed
        assert proc.poll() is None, proc.communicate()
    finally:
        reader.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["lag"] == 0
    assert projected_events(tmp_path) == projected + new


def test_project_names_the_holder_when_the_file_stays_busy_and_loses_nothing(tmp_path: Path) -> None:
    projected, new = _ledger_with_new_events(tmp_path)
    reader = duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True)
    try:
        t0 = time.monotonic()
        busy = tacho(tmp_path, "project", check=False)
        waited = time.monotonic() - t0
    finally:
        reader.close()
    assert busy.returncode == 2
    assert "is in use by another process" in busy.stderr and "Traceback" not in busy.stderr
    assert waited >= 5  # it waited (25 tries, 0.2 s apart) before giving up
    assert projected_events(tmp_path) == projected  # nothing half-applied
    tacho(tmp_path, "project")
    assert projected_events(tmp_path) == projected + new  # and nothing lost: the next run applies it all
