"""Read side benchmark (issue 17): ``tacho serve`` cold start to the first timeline answer,
resident memory, timeline latency at a steady request rate, projection lag under steady ingest.

Each figure has a baseline from the same run:
- cold start and memory: the server's first start over the ledger (no read models yet: it
  projects the whole ledger, as every start did before issue 17) against a restart (the read
  models resume from their recorded positions); ``/healthz`` is the process's own floor;
- timeline latency: ``/healthz`` at the same rate on the same server;
- projection lag: the time one ``POST /v1/events`` of 500 events takes in the same run.

Ledger sizes are steps (``--steps 250000,1000000``): the ledger grows to each in turn and the
start figures are measured at each, so a 10M figure can be extrapolated from the trend (said so).

Usage: ``.venv/bin/python bench/readside.py [--steps 250000,1000000] [--rate 100] [--seconds 10]
[--load 10000] [--load-seconds 10] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

# run as a script, this file would shadow the ``api`` package: import from the repository root
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from api.bootstrap import build_ledger
from api.keys_store import KeyStore
from api.settings import Settings
from domain.ports import Incoming, Source
from domain.workload import Workload
from tachograph.contract.canonical import dumps

ROOT = Path(__file__).resolve().parent.parent
TACHO = [sys.executable, "-c", "import sys; from api.cli import main; sys.argv[0] = 'tacho'; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grow(data: Path, target: int, seed: int) -> tuple[int, float]:
    """Append generated runs until the ledger holds ``target`` entries; (size, seconds)."""
    ledger = build_ledger(Settings(data_dir=data))
    started = time.perf_counter()
    runs_per_round = 4_000
    while ledger.store.size() < target:
        events = Workload(seed=seed, runs=runs_per_round, workspaces=("acme",)).events()
        batch: list[Incoming] = []
        for ev in events:
            ev = {**ev, "run_id": f"{ev['run_id']}-s{seed}", "event_id": f"{ev['event_id']}-s{seed}"}
            batch.append(Incoming(dumps(ev), Source("bench")))
            if len(batch) == 5_000:
                ledger.append(batch)
                batch = []
        if batch:
            ledger.append(batch)
        seed += 1
    size = ledger.store.size()
    ledger.store.close()
    return size, time.perf_counter() - started


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class ChildPeak:
    """Samples the peak resident memory of the server's isolated verification process
    (``python -m domain.verify_round``, a child of ``pid``) while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self.seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if b"domain.verify_round" not in (proc / "cmdline").read_bytes():
                        continue
                    status = (proc / "status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if int(fields["PPid"].strip()) == self.pid:
                    self.seen = True
                    self.peak_mb = max(self.peak_mb, int(fields["VmHWM"].split()[0]) / 1024)
            self._stop.wait(0.05)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return round(self.peak_mb) if self.seen else None


@contextmanager
def serve(data: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, float]]:
    """``tacho serve`` over ``data``: (process, url, when it was spawned)."""
    port = _free_port()
    env = {**os.environ, "TACHO_DATA_DIR": str(data), "TACHO_READ_WAIT_S": "5"}
    spawned = time.perf_counter()
    proc = subprocess.Popen([*TACHO, "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, cwd=ROOT)
    try:
        yield proc, f"http://127.0.0.1:{port}", spawned
    finally:
        proc.terminate()
        proc.wait(60)


def first_answer(url: str, proc: subprocess.Popen[bytes], spawned: float, path: str,
                 headers: dict[str, str], timeout: float = 900) -> float:
    """Seconds from spawn to the first 200 for ``path``."""
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.perf_counter() - spawned < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                if http.get(path, headers=headers).status_code == 200:
                    return time.perf_counter() - spawned
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    raise RuntimeError(f"no answer to {path} within {timeout}s")


def paced(url: str, paths: list[str], headers: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
    """GET ``paths`` in turn at ``rate`` per second: latency p50/p99 (ms) and errors."""
    lat: list[float] = []
    errors = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n / rate
            if now < due:
                time.sleep(due - now)
            t0 = time.perf_counter()
            r = http.get(paths[n % len(paths)], headers=headers)
            lat.append((time.perf_counter() - t0) * 1000)
            errors += r.status_code != 200
            n += 1
    lat.sort()
    return {"requests": len(lat), "errors": errors, "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)}


def lag_under_load(url: str, data: Path, pub: str, rate: int, seconds: float) -> dict[str, Any]:
    """Post batches of 500 new events at ``rate`` events/s; sample the run index's lag."""
    bodies = []
    for ev in Workload(seed=999, runs=max(1, rate * int(seconds) // 10), workspaces=("acme",)).events():
        bodies.append(dumps({**ev, "run_id": f"{ev['run_id']}-load", "event_id": f"{ev['event_id']}-load"}))
    batches = [b"[" + b",".join(bodies[i:i + 500]) + b"]" for i in range(0, len(bodies), 500)]
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        ledger = sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True)
        view = sqlite3.connect(f"file:{data / 'views' / 'run_index.db'}?mode=ro", uri=True)
        while not stop.is_set():
            size = ledger.execute("SELECT size FROM head WHERE id = 1").fetchone()[0]
            pos = view.execute("SELECT notification_id FROM tracking WHERE application_name = 'ledger'").fetchone()[0]
            samples.append(max(0, int(size) - int(pos)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    post_ms: list[float] = []
    sent = 0
    headers = {"Authorization": f"Bearer {pub}", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=60) as http:
        sampler.start()
        start = time.perf_counter()
        for n, body in enumerate(batches):
            if time.perf_counter() - start >= seconds:
                break
            due = start + n * 500 / rate
            if (now := time.perf_counter()) < due:
                time.sleep(due - now)
            t0 = time.perf_counter()
            r = http.post("/v1/events", content=body, headers=headers)
            post_ms.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
            sent += r.json()["accepted"]
        elapsed = time.perf_counter() - start
        time.sleep(1.0)
        stop.set()
        sampler.join()
    achieved = sent / elapsed
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] if samples else 0
    post_p50 = statistics.median(post_ms)
    return {"target_events_per_s": rate, "achieved_events_per_s": round(achieved),
            "lag_p50_entries": samples[len(samples) // 2] if samples else 0, "lag_p99_entries": p99,
            "lag_max_entries": samples[-1] if samples else 0,
            "lag_p99_ms": round(p99 / achieved * 1000, 1) if achieved else None,
            "post_500_p50_ms": round(post_p50, 1),
            "lag_p99_over_post": round(p99 / achieved * 1000 / post_p50, 2) if achieved and post_p50 else None}


def wait_verified(url: str, auth: dict[str, str], timeout: float = 600) -> None:
    """Wait until the server's verification status answers (its first, full round is done)."""
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/v1/log/verification", headers=auth, timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "no verification status"
        time.sleep(0.2)


def verification_after_appends(url: str, pub: str, aud: str, n: int = 1000) -> dict[str, Any]:
    """``GET /v1/log/verification`` right after ``n`` appends: how long the request takes (it reads
    a status the server keeps), how long until the status covers the new entries, and what the
    incremental round took beside the server's first, full round (the same-run baseline)."""
    auth = {"Authorization": f"Bearer {aud}"}
    bodies = [dumps({**ev, "run_id": f"{ev['run_id']}-vs", "event_id": f"{ev['event_id']}-vs"})
              for ev in Workload(seed=4242, runs=max(1, n // 10), workspaces=("acme",)).events()][:n]
    with httpx.Client(base_url=url, timeout=120) as http:
        deadline = time.monotonic() + 600
        while True:  # the first round verifies the whole ledger: wait for it
            r = http.get("/v1/log/verification", headers=auth)
            if r.status_code == 200 and r.json().get("kind") == "full":
                full = r.json()
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        for i in range(0, len(bodies), 500):
            r = http.post("/v1/events", content=b"[" + b",".join(bodies[i:i + 500]) + b"]",
                          headers={"Authorization": f"Bearer {pub}", "Content-Type": "application/json"})
            assert r.status_code == 200, r.text
        size = int(r.json()["size"])
        appended = time.perf_counter()
        request_ms: list[float] = []
        while True:
            t0 = time.perf_counter()
            r = http.get("/v1/log/verification", headers=auth)
            request_ms.append((time.perf_counter() - t0) * 1000)
            status = r.json()
            if status.get("entries", 0) >= size and status.get("ok"):
                covered = time.perf_counter() - appended
                break
            assert time.perf_counter() - appended < 120, status
            time.sleep(0.01)
    request_ms.sort()
    return {"appended": len(bodies), "request_p50_ms": round(statistics.median(request_ms), 1),
            "request_max_ms": round(request_ms[-1], 1), "requests": len(request_ms),
            "status_covers_appends_after_s": round(covered, 3), "incremental_round_ms": status.get("took_ms"),
            "full_round_ms (baseline)": full.get("took_ms"),
            "incremental_over_full": round(status["took_ms"] / full["took_ms"], 4)
            if status.get("took_ms") and full.get("took_ms") else None}


def _one_start(data: Path, headers: dict[str, str], run_path: str) -> dict[str, Any]:
    """One server start: seconds from spawn to ``/healthz``, an early run's timeline, the runs
    list (every entry projected), the first verification round done; memory at each."""
    with serve(data) as (proc, url, spawned):
        child = ChildPeak(proc.pid)
        health = first_answer(url, proc, spawned, "/healthz", {})
        rss_health, _ = rss_mb(proc.pid)
        timeline = first_answer(url, proc, spawned, run_path, headers)
        listed = first_answer(url, proc, spawned, "/v1/runs?limit=1", headers)
        rss, peak = rss_mb(proc.pid)
        # the server's first verification round (the whole ledger, in a process of its own)
        # leaves its bounded state behind: memory once it is done is the steady figure
        wait_verified(url, headers)
        verified = time.perf_counter() - spawned
        rss_verified, peak_verified = rss_mb(proc.pid)
        return {"healthz_s": round(health, 2), "first_timeline_s": round(timeline, 2),
                "first_list_s": round(listed, 2), "rss_at_healthz_mb": round(rss_health),
                "rss_mb": round(rss), "peak_rss_mb": round(peak),
                "verified_s": round(verified, 2), "rss_after_verification_mb": round(rss_verified),
                "peak_rss_after_verification_mb": round(peak_verified),
                "verification_process_peak_mb": child.stop()}


def start_figures(data: Path, auditor: str, run_path: str, first_start: bool = True,
                  restarts: int = 3) -> dict[str, Any]:
    """The server's first start (no read models; skipped when ``first_start`` is false) and
    ``restarts`` restarts (the read models resume), the median of each restart figure."""
    headers = {"Authorization": f"Bearer {auditor}"}
    out: dict[str, Any] = {}
    if first_start:
        out["first_start"] = _one_start(data, headers, run_path)
    runs = [_one_start(data, headers, run_path) for _ in range(restarts)]
    out["restarts"] = runs
    again = out["restart"] = {k: (statistics.median(r[k] for r in runs)
                                  if all(r[k] is not None for r in runs) else None) for k in runs[0]}
    out["restart_list_after_healthz_s"] = round(again["first_list_s"] - again["healthz_s"], 3)
    out["restart_rss_over_healthz"] = round(again["rss_mb"] / again["rss_at_healthz_mb"], 2)
    if first_start:
        first = out["first_start"]
        out["restart_list_over_first"] = round(again["first_list_s"] / first["first_list_s"], 3)
        out["first_list_after_healthz_s"] = round(first["first_list_s"] - first["healthz_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", default="250000,1000000")
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--load", type=int, default=10_000)
    ap.add_argument("--load-seconds", type=float, default=10)
    ap.add_argument("--keep", type=Path, default=None, help="data dir to build in and keep")
    ap.add_argument("--restarts", type=int, default=3, help="restarts timed at each step (medians)")
    ap.add_argument("--reuse-views", action="store_true",
                    help="keep the read models a kept data dir has (no first start: restarts only)")
    args = ap.parse_args()
    # the servers start from bytecode, as an installed package does (with PYTHONDONTWRITEBYTECODE
    # and an editable install, every start would compile each module again: ~0.4 s)
    for package in ("api", "domain", "ingest", "projections", "replay", "tachograph"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    data = args.keep or Path(tempfile.mkdtemp(prefix="tacho-readside-"))
    keys = KeyStore(data / "keys" / "apikeys.db", time.time)
    pub = keys.create("acme", "publisher")[1]
    aud = keys.create("acme", "auditor")[1]
    seed = 1
    results: dict[str, Any] = {"steps": []}
    try:
        for target in (int(s) for s in args.steps.split(",")):
            size, built = grow(data, target, seed)
            seed += 1_000
            if not args.reuse_views:
                shutil.rmtree(data / "views", ignore_errors=True)  # the first start projects everything
            run_path = "/v1/runs/run-0000100-s1/timeline"
            step = {"ledger_entries": size, "build_s": round(built, 1),
                    **start_figures(data, aud, run_path, not args.reuse_views, args.restarts)}
            print(step, flush=True)
            results["steps"].append(step)
        with serve(data) as (proc, url, spawned):
            first_answer(url, proc, spawned, "/v1/runs?limit=1", {"Authorization": f"Bearer {aud}"})
            # the server's first verification round (the whole ledger) competes for the CPU at
            # start: timeline latency is measured once it is done (steady state)
            wait_verified(url, {"Authorization": f"Bearer {aud}"})
            runs = [f"/v1/runs/run-{n:07d}-s1/timeline" for n in range(0, 4000, 37)]
            results["timeline"] = paced(url, runs, {"Authorization": f"Bearer {aud}"}, args.rate, args.seconds)
            results["healthz_same_rate"] = paced(url, ["/healthz"], {}, args.rate, args.seconds)
            results["lag"] = lag_under_load(url, data, pub, args.load, args.load_seconds)
        with serve(data) as (proc, url, spawned):  # timelines while the first (full) round runs
            first_answer(url, proc, spawned, "/v1/runs?limit=1", {"Authorization": f"Bearer {aud}"})
            runs = [f"/v1/runs/run-{n:07d}-s1/timeline" for n in range(0, 4000, 37)]
            auth = {"Authorization": f"Bearer {aud}"}
            results["timeline_during_first_round"] = paced(url, runs, auth, args.rate, min(args.seconds, 4))
            status = httpx.get(url + "/v1/log/verification", headers=auth, timeout=600).json()
            results["timeline_during_first_round"]["round_took_ms"] = status.get("took_ms")
        for key in ("timeline", "healthz_same_rate", "lag", "timeline_during_first_round"):
            print(key, results.get(key), flush=True)
        with serve(data) as (proc, url, spawned):  # a fresh server: its first round is a full one
            first_answer(url, proc, spawned, "/healthz", {})
            results["verification"] = verification_after_appends(url, pub, aud)
        steps = results["steps"]
        if (len(steps) >= 2 and steps[-2]["ledger_entries"] < steps[-1]["ledger_entries"] < 10_000_000
                and all("first_list_after_healthz_s" in step for step in steps[-2:])):
            # the first start folds every entry: a straight line through the last two steps
            a, b = steps[-2], steps[-1]
            span = b["ledger_entries"] - a["ledger_entries"]
            rest = 10_000_000 - b["ledger_entries"]

            def line(fa: float, fb: float) -> float:
                return fb + (fb - fa) / span * rest

            # a restart reads no entry already projected (tests/unit/test_read_side_projections.py),
            # so its figures do not grow with the ledger: the larger of the two steps stands for 10M
            results["extrapolated_10M"] = {
                "first_start_list_after_healthz_s": round(line(a["first_list_after_healthz_s"],
                                                               b["first_list_after_healthz_s"]), 1),
                "restart_list_after_healthz_s (flat)": max(a["restart_list_after_healthz_s"],
                                                           b["restart_list_after_healthz_s"]),
                "restart_rss_mb (flat)": max(a["restart"]["rss_mb"], b["restart"]["rss_mb"]),
            }
        for key in ("verification", "extrapolated_10M"):
            print(key, results.get(key), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
