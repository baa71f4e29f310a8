"""Analytics snapshots: the projector publishes whole read-only files; the API reads the newest
one, and no reader ever holds a file the projector writes."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import duckdb
import pytest

from domain.ports import Incoming, Source
from projections.demo import analytics_path
from projections.errors import AnalyticsMissingError, ProjectionError
from projections.projector import open_projector
from projections.snapshots import CURRENT, current, open_current, publish, snapshot_position
from tachograph.contract.canonical import dumps
from tests.cli_support import start_tacho, tacho
from tests.integration.api_support import close_api, make_api, workload


def _events(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM events").fetchone()[0])


def test_each_snapshot_is_a_whole_file_at_one_position_and_old_ones_are_pruned(tmp_path: Path) -> None:
    a = make_api(tmp_path)
    try:
        events = workload(runs=12, seed=3)
        path, out = analytics_path(a.data_dir), tmp_path / "snapshots"
        published = []
        for part in (events[:40], events[40:80], events[80:120], events[120:]):
            a.ledger.append([Incoming(dumps(e), Source(kind="test")) for e in part])
            with open_projector(a.ledger.store, path) as projector:
                status = projector.catch_up()
                published.append(publish(projector.con, path, out, status.position))
        assert current(out) == published[-1]
        # the last three are kept (a reader that read CURRENT a moment ago still finds its file)
        assert sorted(p.name for p in out.glob("analytics-*.duckdb")) == [p.name for p in published[1:]]
        assert [snapshot_position(p) for p in published[1:]] == sorted(
            snapshot_position(p) for p in published[1:])
        con = open_current(out)
        try:
            assert _events(con) == len(events)
            with pytest.raises(duckdb.Error):  # read-only
                con.execute("DELETE FROM events")
        finally:
            con.close()
        with pytest.raises(ProjectionError, match="keep at least 2"):
            with open_projector(a.ledger.store, path) as projector:
                publish(projector.con, path, out, projector.position(), keep=1)
    finally:
        close_api(a)


def test_a_directory_without_snapshots_says_how_to_publish_one(tmp_path: Path) -> None:
    with pytest.raises(AnalyticsMissingError, match="tacho project --follow --publish"):
        open_current(tmp_path)
    (tmp_path / CURRENT).write_text("../../etc/passwd\n")
    with pytest.raises(ProjectionError, match="names no snapshot file"):
        current(tmp_path)


def test_the_api_serves_analytics_from_the_newest_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "snapshots"
    a = make_api(tmp_path, analytics_dir=out)
    try:
        r = a.client.get("/v1/analytics/outcomes", headers=a.auth("analyst"))
        assert r.status_code == 503 and "tacho project --follow --publish" in r.text
        events = workload(runs=10, seed=4)
        a.ledger.append([Incoming(dumps(e), Source(kind="test")) for e in events])
        path = analytics_path(a.data_dir)
        with open_projector(a.ledger.store, path) as projector:
            publish(projector.con, path, out, projector.catch_up().position)
        path.unlink()  # the API reads the snapshot, never the projector's own file
        r = a.client.get("/v1/analytics/outcomes", headers=a.auth("analyst"))
        assert r.status_code == 200, r.text
        runs = {e["run_id"] for e in events if e["workspace"] == "acme"}
        assert sum(int(row["runs"]) for row in r.json()["rows"]) == len(runs)
        r = a.client.get("/v1/export/events.parquet", headers=a.auth("auditor"))
        assert r.status_code == 200 and r.content.startswith(b"PAR1")
    finally:
        close_api(a)


def test_the_follower_keeps_publishing_while_readers_hold_snapshots(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    tacho(tmp_path, "generate", str(first), "--runs", "20", "--seed", "1")
    tacho(tmp_path, "generate", str(second), "--runs", "20", "--seed", "2", "--workspace", "beta")
    tacho(tmp_path, "import", str(first))
    out = tmp_path / "snapshots"
    follower = start_tacho(tmp_path, "project", "--follow", "--interval", "0.2",
                           "--publish", str(out), "--publish-every", "0")
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(follower.stderr or ()), daemon=True)
    reader.start()
    held = None
    try:
        expected = len(first.read_bytes().splitlines())
        held = _wait_for_snapshot(out, expected)  # held open for the rest of the test
        tacho(tmp_path, "import", str(second))
        expected += len(second.read_bytes().splitlines())
        newer = _wait_for_snapshot(out, expected)
        newer.close()
        assert _events(held) == len(first.read_bytes().splitlines())  # a snapshot never changes
    finally:
        if held is not None:
            held.close()
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=60)
        reader.join(timeout=10)
    assert follower.returncode == 0, "".join(stderr)
    assert any("published" in line for line in stderr)


def _wait_for_snapshot(directory: Path, events: int, timeout: float = 60) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            con = open_current(directory)
        except AnalyticsMissingError:
            time.sleep(0.05)
            continue
        if _events(con) == events:
            return con
        con.close()
        time.sleep(0.05)
    raise AssertionError(f"no snapshot with {events} events in {directory} after {timeout}s")
