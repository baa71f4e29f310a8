"""HTTP API benchmark: ingest events/s (batches of 500) and run-timeline latency under load.

Baseline measured in the same run: the same events through ``ledger.append`` in process.
Usage: ``.venv/bin/python bench/api.py [--events 20000] [--rate 100] [--seconds 10]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# run as a script, this file would shadow the ``api`` package: import from the repository root
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from api.bootstrap import build_ledger
from api.keys_store import KeyStore
from api.settings import Settings
from domain.canonical import dumps
from domain.ports import Incoming, Source
from domain.workload import Workload

BATCH = 500


def app_from_env():  # type: ignore[no-untyped-def]
    """The app over ``TACHO_DATA_DIR`` (for ``uvicorn --factory``)."""
    from api.app import create_app

    return create_app(Settings())


def _events(n: int) -> list[bytes]:
    out: list[bytes] = []
    runs = max(1, n // 12)
    for ev in Workload(seed=11, runs=runs).events():
        out.append(dumps(ev))
        if len(out) >= n:
            break
    return out


def baseline(events: list[bytes]) -> float:
    """Events/s through ledger.append in process."""
    with tempfile.TemporaryDirectory() as d:
        ledger = build_ledger(Settings(data_dir=Path(d)))
        t = time.perf_counter()
        for i in range(0, len(events), BATCH):
            ledger.append([Incoming(r, Source(kind="bench")) for r in events[i:i + BATCH]])
        took = time.perf_counter() - t
        ledger.store.close()
    return len(events) / took


def _reader(url: str, secret: str, runs: list[str], rate: float, seconds: float, q: mp.Queue) -> None:
    lat: list[float] = []
    errors = 0
    rng = random.Random(3)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}) as c:
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            due = start + n / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            t = time.perf_counter()
            r = c.get(f"/v1/runs/{rng.choice(runs)}/timeline")
            lat.append(time.perf_counter() - t)
            errors += r.status_code != 200
            n += 1
    q.put((lat, errors))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    events = _events(args.events)
    base = baseline(events)

    data = Path(tempfile.mkdtemp(prefix="tacho-bench-"))
    keys = KeyStore(data / "keys" / "apikeys.db", time.time)
    pub = keys.create("acme", "publisher")[1]
    aud = keys.create("acme", "auditor")[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TACHO_DATA_DIR": str(data)}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.api:app_from_env", "--factory", "--port", str(port),
         "--log-level", "warning", "--no-access-log"], env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        bodies = [b"[" + b",".join(events[i:i + BATCH]) + b"]" for i in range(0, len(events), BATCH)]
        h = {"Authorization": f"Bearer {pub}", "Content-Type": "application/json"}
        with httpx.Client(base_url=url, headers=h, timeout=60) as c:
            t = time.perf_counter()
            accepted = 0
            for body in bodies:
                accepted += c.post("/v1/events", content=body).json()["accepted"]
            took = time.perf_counter() - t
        http_rate = accepted / took
        runs = sorted({r for r in (e.split(b'"run_id":"')[1].split(b'"')[0].decode() for e in events)})
        q: mp.Queue = mp.Queue()
        p = mp.Process(target=_reader, args=(url, aud, runs, args.rate, args.seconds, q))
        p.start()
        lat, errors = q.get()
        p.join()
    finally:
        server.terminate()
        server.wait(10)
    lat.sort()
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000
    print(f"events: {len(events)} in batches of {BATCH}")
    print(f"baseline ledger.append in process: {base:,.0f} events/s")
    print(f"HTTP POST /v1/events:              {http_rate:,.0f} events/s "
          f"(ratio {http_rate / base:.2f} of baseline; target 10,000)")
    print(f"timeline reads at {args.rate:g} req/s for {args.seconds:g}s from a second process: "
          f"{len(lat)} requests, {errors} errors, p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 < 50 ms)")


if __name__ == "__main__":
    main()
