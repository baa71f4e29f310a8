"""Helpers for the Kafka ingest tests: publishing workloads, worker subprocesses, ledger checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from domain.ports import LedgerStore
from domain.stores.sqlite import SQLiteStore
from domain.workload import Workload
from tachograph.contract.canonical import dumps, loads
from tests.harness import REPO_ROOT

GROUP_ARGS = ["--session-timeout-ms", "3000"]


def workload_messages(runs: int, seed: int = 7) -> list[tuple[str, str, bytes]]:
    """(run_id, event_id, canonical bytes) of a deterministic workload."""
    return [(e["run_id"], e["event_id"], dumps(e)) for e in Workload(seed=seed, runs=runs).events()]


def produce(bootstrap: str, topic: str, messages, **config) -> None:
    """Publish (key, _, value) triples with an idempotent producer and wait for every ack."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                             linger_ms=5, batch_size=256 * 1024, **config)
    try:
        futures = [producer.send(topic, key=k.encode(), value=v) for k, _, v in messages]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close(timeout=10)


def open_ledger_store(db: Path | str) -> LedgerStore:
    """The ledger store at a SQLite path or a PostgreSQL DSN."""
    if isinstance(db, str):
        from domain.stores.postgres import PostgresStore

        return PostgresStore(db)
    return SQLiteStore(db)


def ledger_event_ids(db: Path | str) -> list[str]:
    """Every event id in the ledger, in index order (duplicates would show twice)."""
    store = open_ledger_store(db)
    try:
        return [r.event_id for r in store.entries() if r.kind == "event"]
    finally:
        store.close()


def assert_exactly(db: Path | str, published: list[str]) -> None:
    """The ledger holds each published event exactly once, and nothing else."""
    got = ledger_event_ids(db)
    dupes = [k for k, n in Counter(got).items() if n > 1]
    assert not dupes, f"duplicated in the ledger: {dupes[:5]}"
    missing = set(published) - set(got)
    extra = set(got) - set(published)
    assert not missing, f"{len(missing)} published events missing, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} unexpected events, e.g. {sorted(extra)[:5]}"
    assert len(got) == len(set(published))


def worker_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TACHO_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


def start_worker(bootstrap: str, topic: str, data_dir: Path, *args: str, group: str | None = None,
                 log: Path | None = None, **env: str) -> subprocess.Popen:
    """``tacho ingest`` as a real subprocess (so it can be SIGKILLed)."""
    cmd = [sys.executable, "-m", "api.cli", "ingest", "--bootstrap", bootstrap, "--topic", topic,
           "--group", group or f"g-{topic}", "--json", *args]
    path = log or (data_dir.parent / f"worker-{time.monotonic_ns()}.log")
    with open(path, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=worker_env(data_dir, **env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = path  # type: ignore[attr-defined]
    return proc


def log_tail(proc: subprocess.Popen, lines: int = 40) -> str:
    """The end of a worker's output (for assertion messages)."""
    text = proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    keep = [ln for ln in text.splitlines() if "Deprecat" not in ln and "importlib" not in ln]
    return "\n".join(keep[-lines:])


def kill9(proc: subprocess.Popen) -> None:
    """Crash a worker: SIGKILL, no cleanup."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise AssertionError(f"worker did not stop within {timeout}s") from None


def ledger_size(db: Path | str) -> int:
    if isinstance(db, Path) and not db.exists():
        return 0
    store = open_ledger_store(db)
    try:
        return store.size()
    finally:
        store.close()


def quarantined(db: Path) -> list:
    store = SQLiteStore(db)
    try:
        return store.quarantine(limit=10_000)
    finally:
        store.close()


def event_of(raw: bytes) -> dict:
    return loads(raw)


def pids_running(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (zombies excluded)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(int(d.name))
    return out
