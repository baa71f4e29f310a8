"""Benchmark: projection throughput and report query times (extrapolated to 10M events).

    .venv/bin/python bench/projections.py --events 1000000 [--dir /tmp/tacho-bench]

Builds (or reuses) a SQLite ledger of generated events, projects it into DuckDB in three
steps (25%, 50%, 100%) timing each, times the ``cost_per_outcome`` and ``violation_rates``
queries at each step, and, in the same run, times DuckDB computing the same figures straight
from a Parquet file of the same events (the baseline). Query times at 10M events are a
linear extrapolation from the three measured points.

Projection's same-run baseline is the bare read of the same entries through the store port
(the floor no projector can beat); CPU seconds per 100,000 events are printed beside the wall
time because the dev machine is shared and wall time moves with the other engineers' load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# this file is named like the package it measures: keep bench/ off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.ledger import Ledger, LedgerConfig  # noqa: E402
from domain.note import NoteSigner  # noqa: E402
from domain.ports import Incoming, Source  # noqa: E402
from domain.stores.sqlite import SQLiteStore  # noqa: E402
from domain.workload import Workload  # noqa: E402
from projections.projector import open_projector  # noqa: E402
from tachograph.contract.canonical import dumps  # noqa: E402

ORIGIN = "bench.example/log"

PARQUET_CPO = """
WITH r AS (
  SELECT workspace, run_id,
    any_value(workflow) FILTER (WHERE type = 'run.started') AS workflow,
    min(time) FILTER (WHERE type = 'run.started') AS started_at,
    coalesce(sum(cost_usd), 0) AS cost,
    bool_or(type = 'run.completed' AND outcome = 'succeeded')
      AND NOT coalesce(bool_or(type = 'feedback.recorded' AND NOT accepted), false) AS ok
  FROM read_parquet('{path}') GROUP BY ALL)
SELECT workspace, workflow, CAST(started_at AS DATE) AS day, count(*), count(*) FILTER (WHERE ok),
  sum(cost), quantile_disc(cost, 0.5), quantile_disc(cost, 0.95)
FROM r GROUP BY ALL"""

PARQUET_VIOL = """
WITH r AS (
  SELECT workspace, run_id,
    any_value(workflow) FILTER (WHERE type = 'run.started') AS workflow,
    any_value(agent_version) AS agent_version,
    count(*) FILTER (WHERE type = 'policy.evaluated' AND decision = 'deny') AS denials,
    count(*) FILTER (WHERE type = 'tool.called') AS tools
  FROM read_parquet('{path}') GROUP BY ALL)
SELECT workspace, workflow, agent_version, count(*), count(*) FILTER (WHERE denials > 0),
  sum(denials) * 1000.0 / sum(tools)
FROM r GROUP BY ALL"""


def build_ledger(path: Path, events: int) -> SQLiteStore:
    """A ledger with at least ``events`` generated events (reused if already there)."""
    store = SQLiteStore(path)
    if store.size() >= events:
        return store
    ledger = Ledger(store, NoteSigner.generate(ORIGIN), LedgerConfig(origin=ORIGIN, checkpoint_every=10**9,
                                                                    checkpoint_interval_s=10**9),
                    clock=lambda: 1_700_000_000.0)
    runs = events // 13 + 100
    batch: list[Incoming] = []
    n = store.size()
    started = time.perf_counter()
    for n_done, ev in enumerate(Workload(seed=11, runs=runs, workspaces=("acme", "globex")).events()):
        if n_done < n:
            continue
        batch.append(Incoming(dumps(ev), Source("bench")))
        if len(batch) == 5000:
            ledger.append(batch)
            batch = []
            if store.size() >= events:
                break
    if batch:
        ledger.append(batch)
    print(f"built ledger of {store.size():,} entries in {time.perf_counter() - started:.1f}s")
    return store


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Median wall time of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark and print a markdown summary."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/tacho-bench"))
    ap.add_argument("--batch-size", type=int, default=250_000)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    store = build_ledger(args.dir / f"ledger-{args.events}.db", args.events)
    total = min(store.size(), args.events)
    db = args.dir / "analytics.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        if p.exists():
            os.unlink(p)
    started, cpu = time.perf_counter(), time.process_time()
    read = sum(1 for _ in store.raw_entries(0, total))
    read_s, read_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"baseline: read {read:,} entries through the store port at {read / read_s:,.0f}/s "
          f"({read_cpu / read * 100_000:.2f} CPU s per 100k)")
    points = []
    project_s = 0.0
    project_cpu = 0.0
    projected = 0
    with open_projector(store, db, args.batch_size) as projector:
        projector.create()
        con = projector.con
        for fraction in (0.25, 0.5, 1.0):
            cpu = time.process_time()
            status = projector.catch_up(limit=int(total * fraction) - projector.position())
            project_cpu += time.process_time() - cpu
            project_s += status.seconds
            projected += status.applied
            size = projector.position()
            cpo = timed(lambda: con.execute("SELECT * FROM cost_per_outcome").fetchall())
            viol = timed(lambda: con.execute("SELECT * FROM violation_rates").fetchall())
            parquet = args.dir / f"events-{size}.parquet"
            con.execute(f"COPY (SELECT * FROM events) TO '{parquet}' (FORMAT parquet, COMPRESSION zstd)")
            base_cpo = timed(lambda: con.execute(PARQUET_CPO.format(path=parquet)).fetchall())
            base_viol = timed(lambda: con.execute(PARQUET_VIOL.format(path=parquet)).fetchall())
            parquet.unlink()
            points.append((size, cpo, viol, base_cpo, base_viol))
            print(f"{size:>10,} events: projected at {status.applied / status.seconds:,.0f}/s; "
                  f"cost_per_outcome {cpo * 1000:.1f} ms (parquet scan {base_cpo * 1000:.1f} ms), "
                  f"violation_rates {viol * 1000:.1f} ms (parquet scan {base_viol * 1000:.1f} ms)")

    def extrapolate(i: int) -> float:
        xs = [p[0] for p in points]
        ys = [p[i] for p in points]
        slope, intercept = statistics.linear_regression(xs, ys)
        return slope * 10_000_000 + intercept

    rate = projected / project_s
    print()
    print(f"| figure | measured ({total:,} events) | extrapolated to 10M | baseline | ratio |")
    print("|---|---|---|---|---|")
    print(f"| projection | {rate:,.0f} events/s ({project_cpu / projected * 100_000:.2f} CPU s "
          f"per 100k, batches of {args.batch_size:,}) | — | bare store read {read / read_s:,.0f}/s "
          f"| {rate / (read / read_s):.2f}× of the read; target ≥ 100,000/s "
          f"{'met' if rate >= 100_000 else 'NOT met'} |")
    last = points[-1]
    for name, i, b in (("cost_per_outcome", 1, 3), ("violation_rates", 2, 4)):
        print(f"| {name} query | {last[i] * 1000:.1f} ms | {extrapolate(i) * 1000:.0f} ms (extrapolated) "
              f"| {last[b] * 1000:.1f} ms ({extrapolate(b) * 1000:.0f} ms at 10M, extrapolated) "
              f"| {last[i] / last[b]:.2f}× of baseline |")


if __name__ == "__main__":
    main()
