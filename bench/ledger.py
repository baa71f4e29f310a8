"""Ledger benchmark: import and verify throughput beside a plain-Python floor, same run.

The floor reads the same JSONL, parses each line and appends SHA-256-chained rows to SQLite
in one transaction: the least any signed ledger must do. Usage:

    .venv/bin/python bench/ledger.py [--events 100000] [--batch 2000] [--rounds 3] [--json]

The floor and the import run back to back ``--rounds`` times and the medians are reported:
on a shared, noisy machine one pair alone can land on either side of a target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.cli_ledger import verify_store  # noqa: E402
from domain import merkle  # noqa: E402
from domain.ledger import Ledger, LedgerConfig  # noqa: E402
from domain.note import NoteSigner  # noqa: E402
from domain.stores.sqlite import SQLiteStore  # noqa: E402
from domain.workload import Workload  # noqa: E402
from ingest.jsonl import import_jsonl  # noqa: E402
from tachograph.contract.canonical import dumps  # noqa: E402


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


def verify_in_fresh_process(db: Path, vkey: str, runs: int) -> list[float]:
    """Seconds of each of ``runs`` verifications, each timed in a fresh `verify_only` process."""
    out = subprocess.run(
        [sys.executable, __file__, "--verify-only", str(db), "--vkey", vkey, "--verify-runs", str(runs)],
        check=True, capture_output=True, text=True,
    ).stdout
    seconds = json.loads(out)
    assert len(seconds) == runs, out
    return seconds


def verify_only(db: Path, vkey: str, runs: int) -> None:
    """Open the ledger as `tacho verify` does and verify it ``runs`` times; print the seconds."""
    store = SQLiteStore(db)
    seconds = []
    for _ in range(runs):
        t = time.perf_counter()
        result = verify_store(store, [vkey])  # what `tacho verify` runs
        seconds.append(time.perf_counter() - t)
        assert result.ok, result.reason
    store.close()
    print(json.dumps(seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--verify-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--vkey", help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3, choices=range(1, 100), metavar="N",
                    help="floor-then-import rounds; the medians are reported (the machine is noisy)")
    ap.add_argument("--verify-runs", type=int, default=3, help="verify this many times; report the median")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.verify_only:
        verify_only(args.verify_only, args.vkey, args.verify_runs)
        return
    tmp = Path(tempfile.mkdtemp(prefix="tacho-bench-"))
    try:
        src = tmp / "events.jsonl"
        n = write_workload(src, args.events)
        signer = NoteSigner.from_seed("bench.example/log", b"\1" * 32)
        rounds = []  # (floor seconds, import seconds), measured back to back
        db = tmp / "ledger.db"
        for _ in range(args.rounds):
            for old in tmp.glob("*.db*"):  # each round starts from empty files
                old.unlink()
            floor_s = floor(src, tmp / "floor.db")
            ledger = Ledger(SQLiteStore(db), signer, LedgerConfig("bench.example/log"), time.time)
            t = time.perf_counter()
            totals = import_jsonl(ledger, src, args.batch)
            rounds.append((floor_s, time.perf_counter() - t))
            assert totals.accepted == n, totals.to_json()
            ledger.store.close()
        ratios = [i / f for f, i in rounds]
        floor_s = statistics.median(f for f, _ in rounds)
        import_s = statistics.median(i for _, i in rounds)
        # `tacho import` and `tacho verify` are separate commands: verification is timed in a
        # fresh process that opens the closed ledger, as `tacho verify` does (a process still
        # holding the import's heap pays for it at every fork of the verify workers)
        verify_runs = verify_in_fresh_process(db, signer.vkey, args.verify_runs)
        verify_s = statistics.median(verify_runs)
        out = {
            "events": n,
            "floor_events_per_s": round(n / floor_s),
            "import_events_per_s": round(n / import_s),
            "import_vs_floor": round(statistics.median(ratios), 2),
            "rounds": [
                {"floor_events_per_s": round(n / f), "import_events_per_s": round(n / i),
                 "import_vs_floor": round(i / f, 2)}
                for f, i in rounds
            ],
            "verify_events_per_s": round(n / verify_s),
            "verify_runs_events_per_s": [round(n / v) for v in verify_runs],
            "list_hashing": "C (domain/_sha256batch.c)" if merkle.NATIVE else "hashlib (C build absent)",
            "targets": {"import_events_per_s": 25_000, "import_vs_floor_max": 3.0, "verify_events_per_s": 300_000},
        }
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"events                {n:>10,}")
            print(f"floor (plain Python)  {out['floor_events_per_s']:>10,} events/s")
            print(f"tacho import          {out['import_events_per_s']:>10,} events/s  "
                  f"({out['import_vs_floor']}x the floor's time; target <= 3x, >= 25,000/s)")
            each = ", ".join(f"{r['import_vs_floor']}x" for r in out["rounds"])
            print(f"  rounds              {each} (floor then import, back to back; medians above)")
            runs = ", ".join(f"{v:,}" for v in out["verify_runs_events_per_s"])
            print(f"tacho verify          {out['verify_events_per_s']:>10,} events/s  (median of {runs}; "
                  "target >= 300,000/s)")
            print(f"list hashing          {out['list_hashing']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
