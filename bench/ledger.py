"""Ledger benchmark: import and verify throughput beside a plain-Python floor, same run.

The floor reads the same JSONL, parses each line and appends SHA-256-chained rows to SQLite
in one transaction: the least any signed ledger must do. Usage:

    .venv/bin/python bench/ledger.py [--events 100000] [--batch 5000] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domain.canonical import dumps  # noqa: E402
from domain.ledger import Ledger, LedgerConfig  # noqa: E402
from domain.note import NoteSigner  # noqa: E402
from domain.stores.sqlite import SQLiteStore  # noqa: E402
from domain.verify import verify_log  # noqa: E402
from domain.workload import Workload  # noqa: E402
from ingest.jsonl import import_jsonl  # noqa: E402


def write_workload(path: Path, events: int) -> int:
    n = 0
    runs = max(1, events // 13)
    with path.open("wb") as f:
        for ev in Workload(seed=11, runs=runs * 2).events():
            f.write(dumps(ev) + b"\n")
            n += 1
            if n >= events:
                break
    return n


def floor(path: Path, db: Path) -> float:
    """Plain Python: parse JSONL, chain with SHA-256, insert into SQLite, one transaction."""
    t = time.perf_counter()
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA synchronous = FULL")
    c.execute("CREATE TABLE log (idx INTEGER PRIMARY KEY, data BLOB, hash BLOB)")
    prev = b"\0" * 32
    rows = []
    with path.open("rb") as f:
        for i, line in enumerate(f):
            json.loads(line)
            prev = hashlib.sha256(prev + line).digest()
            rows.append((i, line, prev))
    c.execute("BEGIN")
    c.executemany("INSERT INTO log VALUES (?, ?, ?)", rows)
    c.execute("COMMIT")
    c.close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--verify-runs", type=int, default=3, help="verify this many times; report the median")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tacho-bench-"))
    try:
        src = tmp / "events.jsonl"
        n = write_workload(src, args.events)
        floor_s = floor(src, tmp / "floor.db")
        signer = NoteSigner.from_seed("bench.example/log", b"\1" * 32)
        ledger = Ledger(SQLiteStore(tmp / "ledger.db"), signer, LedgerConfig("bench.example/log"), time.time)
        t = time.perf_counter()
        totals = import_jsonl(ledger, src, args.batch)
        import_s = time.perf_counter() - t
        assert totals.accepted == n, totals.to_json()
        # as `tacho import` then `tacho verify`: the import's store is closed (its WAL folded
        # into the file), and verification opens the ledger afresh
        ledger.store.close()
        store = SQLiteStore(tmp / "ledger.db")
        verify_runs: list[float] = []
        for _ in range(args.verify_runs):
            t = time.perf_counter()
            result = verify_log(
                store.range_reader(),
                [c.note for c in store.checkpoints()],
                [signer.vkey],
                workers=os.cpu_count() or 1,
            )
            verify_runs.append(time.perf_counter() - t)
            assert result.ok, result.reason
        verify_s = statistics.median(verify_runs)
        store.close()
        assert result.ok, result.reason
        out = {
            "events": n,
            "floor_events_per_s": round(n / floor_s),
            "import_events_per_s": round(n / import_s),
            "import_vs_floor": round(import_s / floor_s, 2),
            "verify_events_per_s": round(n / verify_s),
            "verify_runs_events_per_s": [round(n / v) for v in verify_runs],
            "targets": {"import_events_per_s": 25_000, "import_vs_floor_max": 3.0, "verify_events_per_s": 300_000},
        }
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"events                {n:>10,}")
            print(f"floor (plain Python)  {out['floor_events_per_s']:>10,} events/s")
            print(f"tacho import          {out['import_events_per_s']:>10,} events/s  "
                  f"({out['import_vs_floor']}x the floor's time; target <= 3x, >= 25,000/s)")
            runs = ", ".join(f"{v:,}" for v in out["verify_runs_events_per_s"])
            print(f"tacho verify          {out['verify_events_per_s']:>10,} events/s  (median of {runs}; "
                  "target >= 300,000/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
