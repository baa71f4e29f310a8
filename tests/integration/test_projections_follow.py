"""`tacho project --follow` keeps the views current while events keep arriving."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import duckdb

from tests.cli_support import projected_events, start_tacho, tacho


def test_follow_projects_new_events_as_they_land_and_reports_lag(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    tacho(tmp_path, "generate", str(first), "--runs", "30", "--seed", "1")
    tacho(tmp_path, "generate", str(second), "--runs", "20", "--seed", "2", "--workspace", "beta")
    tacho(tmp_path, "import", str(first))
    follower = start_tacho(tmp_path, "project", "--follow", "--interval", "0.2", "--json")
    lines: list[str] = []  # the follower's stdout, read as it comes
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout or ()), daemon=True)
    reader.start()
    try:
        expected = len(first.read_bytes().splitlines())
        # caught up and idle (from the moment its first projection ends): the follower leaves
        # the file alone, so a reader holding it does not stop its polls, and every read gets in
        con = _hold_when_projected(tmp_path, expected)
        try:
            polls_before = _polls(lines)
            time.sleep(2.0)
            assert _polls(lines) - polls_before >= 3  # ten intervals: it kept polling
        finally:
            con.close()
        reads = []
        for _ in range(100):
            reads.append(_safe_count(tmp_path))
            time.sleep(0.01)
        assert reads == [expected] * 100
        tacho(tmp_path, "import", str(second))  # the ledger grows while the follower runs
        expected += len(second.read_bytes().splitlines())
        assert _wait_for_count(tmp_path, expected) == expected
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=60)
        reader.join(timeout=10)
        err = follower.stderr.read() if follower.stderr else ""
    assert follower.returncode == 0, err
    polls = [json.loads(line) for line in lines if line.startswith("{\"")]
    metrics = [p for p in polls if p.get("metric") == "projection"]
    assert metrics and all("lag" in p for p in metrics)
    assert metrics[-1]["lag"] == 0  # caught up: the lag it reports is what is left to project


def _hold_when_projected(data_dir: Path, expected: int, timeout: float = 60) -> duckdb.DuckDBPyConnection:
    """A read-only connection taken as soon as the file shows ``expected`` events.

    Tried every few milliseconds, so that it lands right after the follower's first projection
    closes the file, before anything the follower does next.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            con = duckdb.connect(str(data_dir / "analytics.duckdb"), read_only=True)
        except duckdb.Error:
            time.sleep(0.002)
            continue
        try:
            count = int(con.execute("SELECT count(*) FROM events").fetchone()[0])
        except duckdb.Error:
            count = -1
        if count == expected:
            return con
        con.close()
        time.sleep(0.002)
    raise AssertionError(f"the follower did not project {expected} events in {timeout}s")


def _polls(lines: list[str]) -> int:
    """How many poll reports the follower has printed so far (one JSON line per poll)."""
    return sum(1 for line in list(lines) if line.startswith('{"metric":"projection"'))


def _wait_for_count(data_dir: Path, expected: int, timeout: float = 60) -> int:
    """The last count read before it reached ``expected`` or the time ran out."""
    deadline, seen = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        count = _safe_count(data_dir) if (data_dir / "analytics.duckdb").exists() else -1
        seen = count if count >= 0 else seen
        if seen >= expected:
            break
        time.sleep(0.2)
    return seen


def _safe_count(data_dir: Path) -> int:
    try:
        return projected_events(data_dir)
    except duckdb.Error:  # the follower holds the file while it applies a batch
        return -1


def test_cost_per_outcome_renders_as_a_png_chart_and_as_csv(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    tacho(tmp_path, "generate", str(events), "--runs", "60", "--seed", "4")
    tacho(tmp_path, "import", str(events))
    tacho(tmp_path, "project")
    chart = tmp_path / "cost.png"
    tacho(tmp_path, "report", "cost-per-outcome", "--by", "workflow,day", "--format", "png", "-o", str(chart))
    data = chart.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
    csv = tacho(tmp_path, "report", "cost-per-outcome", "--by", "workflow", "--format", "csv").stdout
    header, *rows = csv.strip().splitlines()
    assert "workflow" in header and len(rows) == 3  # the three generated workflows
