"""Crash safety: a projector killed mid-way (SIGKILL) resumes without losing or double-counting."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from api.bootstrap import build_ledger
from api.settings import Settings
from domain.ports import Incoming, Source
from domain.workload import Workload
from projections.projector import Projector, connect
from tachograph.contract.canonical import dumps
from tests.cli_support import ROOT, TACHO
from tests.unit.test_projections_rebuild import snapshot


def _fill(data_dir: Path, runs: int) -> int:
    ledger = build_ledger(Settings(data_dir=data_dir))
    events = [Incoming(dumps(e), Source("test")) for e in Workload(seed=3, runs=runs).events()]
    for i in range(0, len(events), 2000):
        ledger.append(events[i:i + 2000])
    return ledger.store.size()


def _position(path: Path) -> int:
    con = connect(path, read_only=True, retries=20)
    try:
        return int(con.execute(
            "SELECT notification_id FROM tracking WHERE application_name = 'ledger'").fetchall()[0][0])
    except duckdb.CatalogException:  # killed before the schema was committed
        return 0
    finally:
        con.close()


@pytest.mark.slow
def test_killing_the_projector_mid_way_then_rerunning_equals_a_rebuild(tmp_path: Path) -> None:
    data = tmp_path / "data"
    size = _fill(data, 1500)
    env = {**os.environ, "TACHO_DATA_DIR": str(data)}
    analytics = data / "analytics.duckdb"
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen([*TACHO, "project", "--batch-size", "500"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.6 + 0.25 * attempt)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if analytics.exists() and _position(analytics) == size:
            break
    assert kills >= 1, "the projector finished before it could be killed; make the ledger bigger"
    done = subprocess.run([*TACHO, "project", "--json"], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    con = connect(analytics)
    incremental = snapshot(con)
    con.close()
    from domain.stores.sqlite import SQLiteStore

    store = SQLiteStore(data / "ledger.db")
    full = connect(tmp_path / "rebuild.duckdb")
    Projector(store, full).rebuild()
    assert incremental == snapshot(full)
    assert len(incremental["events"]) == size
    assert len({row[0] for row in incremental["events"]}) == size  # no index twice


def test_a_failure_inside_a_batch_rolls_back_its_rows_and_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    size = _fill(data, 60)
    from domain.stores.sqlite import SQLiteStore

    store = SQLiteStore(data / "ledger.db")
    con = connect(tmp_path / "a.duckdb")
    projector = Projector(store, con, batch_size=100)
    projector.catch_up(limit=100)
    before = snapshot(con)
    # the events of the next batch are inserted, then the run recompute fails before commit
    monkeypatch.setattr("projections.projector.RUN_FACTS_SELECT", "SELECT no_such_column FROM {touched} WHERE {low} >= 0")
    with pytest.raises(Exception, match="no_such_column"):
        projector.catch_up()
    assert snapshot(con) == before
    monkeypatch.undo()
    projector.catch_up()
    assert projector.position() == size
    assert con.execute("SELECT count(DISTINCT idx), count(*) FROM events").fetchall()[0] == (size, size)
