"""The Parquet lake reads back identically in DuckDB and pyarrow; a second export adds only new rows."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from projections.errors import LakeError
from projections.lake import LAKE_TABLES, MANIFEST, export_parquet, lake_glob
from projections.projector import Projector, connect
from tests.factories import items, make_ledger
from tests.unit.test_projections_figures import hand_built, workload_events

ORIGIN = "test.example/log"


def _lake_rows_duckdb(lake: Path, table: str) -> list[tuple]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(
        f"SELECT * FROM read_parquet('{lake_glob(lake, table)}', hive_partitioning = true) ORDER BY idx"
    ).fetchall()


def _columns(con, table: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    events = hand_built() + workload_events(60)
    ledger = make_ledger(tmp_path / "ledger.db")
    half = len(events) // 2
    ledger.append(items(events[:half]))
    con = connect(tmp_path / "a.duckdb")
    projector = Projector(ledger.store, con)
    projector.catch_up()
    yield ledger, events[half:], con, projector, tmp_path / "lake"
    con.close()


def test_the_lake_reads_back_identically_in_duckdb_and_pyarrow(setup) -> None:  # type: ignore[no-untyped-def]
    _ledger, _, con, _, lake = setup
    report = export_parquet(con, lake, ORIGIN)
    assert report.rows > 0
    for table in LAKE_TABLES:
        cols = _columns(con, table)
        select = ", ".join(f'"{c}"' for c in cols)
        expected = con.execute(f"SELECT {select} FROM {table} ORDER BY idx").fetchall()
        got = duckdb.connect().execute(
            f"SET TimeZone = 'UTC'; SELECT {select} FROM read_parquet('{lake_glob(lake, table)}', "
            "hive_partitioning = true) ORDER BY idx").fetchall()
        assert got == expected, table
        # pyarrow, with the hive partition columns typed explicitly
        part = ds.partitioning(pa.schema([("workspace", pa.string()), ("date", pa.date32())]),
                               flavor="hive")
        arrow = ds.dataset(lake / table, format="parquet", partitioning=part).to_table()
        arrow = arrow.sort_by("idx").select(cols)
        assert [tuple(r.values()) for r in arrow.to_pylist()] == expected, table
    # the layout is hive style and zstd compressed
    files = list((lake / "model_calls").glob("workspace=*/date=*/part-*.parquet"))
    assert files
    import pyarrow.parquet as pq

    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_a_second_export_adds_only_the_new_rows(setup) -> None:  # type: ignore[no-untyped-def]
    ledger, rest, con, projector, lake = setup
    first = export_parquet(con, lake, ORIGIN)
    again = export_parquet(con, lake, ORIGIN)
    assert again.rows == 0 and again.files == []
    ledger.append(items(rest))
    projector.catch_up()
    second = export_parquet(con, lake, ORIGIN)
    assert second.start == first.end and second.end == ledger.store.size()
    assert not {f["path"] for f in first.files} & {f["path"] for f in second.files}
    got = _lake_rows_duckdb(lake, "events")
    assert [r[0] for r in got] == list(range(ledger.store.size()))  # every entry exactly once
    manifest = orjson.loads((lake / MANIFEST).read_bytes())
    assert manifest["position"] == ledger.store.size() and len(manifest["exports"]) == 2  # the empty export wrote nothing


def test_files_left_by_a_crashed_export_are_replaced_not_duplicated(setup) -> None:  # type: ignore[no-untyped-def]
    ledger, rest, con, projector, lake = setup
    export_parquet(con, lake, ORIGIN)
    ledger.append(items(rest))
    projector.catch_up()
    second = export_parquet(con, lake, ORIGIN)
    # simulate a crash after writing files but before the manifest: restore the old manifest
    manifest = orjson.loads((lake / MANIFEST).read_bytes())
    manifest["exports"].pop()
    manifest["position"] = second.start
    (lake / MANIFEST).write_bytes(orjson.dumps(manifest))
    redo = export_parquet(con, lake, ORIGIN)
    assert redo.removed_orphans == len(second.files)
    got = _lake_rows_duckdb(lake, "events")
    assert [r[0] for r in got] == list(range(ledger.store.size()))


def test_since_exports_only_events_on_or_after_the_date(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, con, _, lake = setup
    export_parquet(con, lake, ORIGIN, since=date(2026, 11, 10))
    dates = {r[0] for r in duckdb.connect().execute(
        f"SELECT DISTINCT date FROM read_parquet('{lake_glob(lake, 'events')}', "
        "hive_partitioning = true)").fetchall()}
    assert dates and min(dates) >= date(2026, 11, 10)


def test_a_directory_with_foreign_files_is_refused(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, con, _, _ = setup
    other = tmp_path / "not-a-lake"
    other.mkdir()
    (other / "thesis.docx").write_text("precious")
    with pytest.raises(LakeError, match="refusing"):
        export_parquet(con, other, ORIGIN)
    assert os.listdir(other) == ["thesis.docx"]
