"""The Kafka leg of ``tacho demo``: a broker, and ``tacho ingest``'s worker appending to the ledger
what the demo's agents publish, while they run.

With no Kafka configured (``TACHO_KAFKA_BOOTSTRAP``) the embedded development broker (Tansu, in
memory) is started. The worker follows the topic on a thread of this process from the moment the
leg starts, because an agent that waits for a person needs its ``approval.requested`` in the
ledger before anyone can decide it; :meth:`KafkaLeg.drain` stops it once the ledger holds every
event the agents reported as sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol

from rich.console import Console

from domain.errors import TachographError
from domain.ledger import Ledger
from ingest.devbroker import DevBroker, ensure_topic
from ingest.worker import IngestWorker, WorkerConfig, WorkerSummary

DRAIN_TIMEOUT_S = 60.0
"""How long :meth:`KafkaLeg.drain` waits for the worker to append what was published."""


class KafkaSettings(Protocol):
    """The settings the demo reads (``api.settings.Settings`` has them)."""

    kafka_bootstrap: str | None
    topic: str
    data_dir: Path


class DemoIngestError(TachographError):
    """The demo's ingest worker stopped, or did not append what the agents published in time."""


class KafkaLeg:
    """A broker (the dev broker unless Kafka is configured) and one ingest worker following its topic."""

    def __init__(self, settings: KafkaSettings, ledger: Ledger, out: Console) -> None:
        self.settings = settings
        self.ledger = ledger
        self.out = out
        self.topic = settings.topic
        self.bootstrap = settings.kafka_bootstrap or ""
        self.broker: DevBroker | None = None
        self.worker: IngestWorker | None = None
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    @property
    def url(self) -> str:
        """Where agents send their events, as the runtime's ``connect`` takes it."""
        return f"kafka://{self.bootstrap}/{self.topic}"

    def start(self) -> KafkaLeg:
        """Start the dev broker unless Kafka is configured, create the topic, start the worker."""
        if not self.bootstrap:
            t0 = time.monotonic()
            self.broker = DevBroker().start()
            self.bootstrap = self.broker.bootstrap
            self.out.print(f"no Kafka configured: started the dev broker (Tansu, in memory) on "
                           f"{self.bootstrap} in {time.monotonic() - t0:.1f}s")
        ensure_topic(self.bootstrap, self.topic, partitions=3)
        # a fresh dev broker starts its offsets from 0 again, so it gets its own consumer group
        group = f"demo-{self.broker.cluster_id}" if self.broker is not None else "tachograph-ingest"
        config = WorkerConfig(bootstrap=self.bootstrap, topic=self.topic, group=group, assign=True,
                              parallel=False, poll_timeout_ms=100)
        self.worker = IngestWorker(self.ledger, config)
        self._thread = threading.Thread(target=self._work, name="tacho-demo-ingest", daemon=True)
        self._thread.start()
        return self

    def _work(self) -> None:
        assert self.worker is not None
        try:
            self.worker.run()
        except BaseException as e:  # reported by drain(), which the demo always reaches
            self._failed = e

    @property
    def alive(self) -> bool:
        """Whether the worker is still consuming."""
        return self._thread is not None and self._thread.is_alive()

    def drain(self, expected: Mapping[tuple[str, str], int], timeout: float = DRAIN_TIMEOUT_S) -> WorkerSummary:
        """Wait until the ledger holds ``expected[(workspace, run_id)]`` events of each run, then
        stop the worker (it signs a checkpoint) and return what it did."""
        assert self.worker is not None and self._thread is not None
        deadline = time.monotonic() + timeout
        missing = dict(expected)
        while missing:
            missing = {k: n for k, n in missing.items()
                       if len(self.ledger.store.run_entries(k[0], k[1])) < n}
            if not missing:
                break
            if not self.alive or time.monotonic() > deadline:
                self.worker.stop("the demo gave up waiting")
                self._thread.join(30)
                why = self._failed or f"{len(missing)} run(s) not complete after {timeout:g}s"
                raise DemoIngestError(f"the ingest worker did not append every published event: {why}")
            time.sleep(0.05)
        self.worker.stop("every published event ingested")
        self._thread.join(60)
        if self._failed is not None:
            raise DemoIngestError(f"the ingest worker failed: {self._failed}") from self._failed
        return self.worker.summary

    def stop(self) -> None:
        """Stop the worker (if still running) and the dev broker (if started here)."""
        try:
            if self.worker is not None and self.alive:
                self.worker.stop("demo stopped")
                assert self._thread is not None
                self._thread.join(30)
        finally:
            if self.broker is not None:
                self.broker.stop()

    def __enter__(self) -> KafkaLeg:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def print_worker(ingested: WorkerSummary, out: Console) -> None:
    """One line: what the ingest worker did."""
    rate = ingested.consumed / max(ingested.seconds, 1e-9)
    out.print(
        f"tacho ingest's worker: consumed {ingested.consumed:,}, accepted [green]{ingested.accepted:,}[/], "
        f"duplicates absorbed {ingested.duplicates:,}, quarantined {ingested.quarantined:,} "
        f"in {ingested.seconds:.1f}s ({rate:,.0f}/s); ledger size {ingested.ledger_size:,}, "
        f"signed checkpoint at {ingested.checkpoint_size:,}"
    )
