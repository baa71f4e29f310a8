"""Kafka consumption for the ingest worker: poll, package and (optionally) validate batches.

A ``Fetcher`` owns the ``KafkaConsumer``. It runs either inside the worker's process, or in a
process of its own (``FetcherProcess``) where it also validates every batch, so that decoding
Kafka records and checking the contract overlap the worker's appends on a second core.

Either way the worker, which holds the ledger, sees the same messages:

- ``("batch", Batch)``: records polled, with the next offset of each partition;
- ``("idle", lag)``: a poll that returned nothing;
- ``("assigned", partitions)``: a question: the fetcher seeks each partition to the offset the
  worker answers with (the ledger's, never Kafka's);
- ``("revoked", partitions)``: a question: the worker answers once it has appended every batch
  sent before, so another worker resumes exactly where this one stopped;
- ``("broker_error", reason)``: a retriable Kafka error that is being waited out.

The worker answers each question in order, after every message sent before it: that order is
what keeps ingest exactly once across rebalances.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from domain.errors import TachographError
from domain.ledger import Packed, validate_packed
from domain.ports import Incoming, Source
from ingest.errors import BrokerUnavailableError, IngestConfigError
from ingest.gcpolicy import tune_for_batches
from ingest.membership import forget_member_id, load_member_id, resume_member, save_member_id

if TYPE_CHECKING:
    from ingest.worker import WorkerConfig

log = logging.getLogger(__name__)

Partition = tuple[str, int]
Message = tuple[Any, ...]

#: the group session timeout unless configured: a worker that dies and does not come back loses
#: its partitions to the others after this long (kafka-python's own default is 45 s; Tansu also
#: holds every JoinGroup for half of it)
SESSION_TIMEOUT_MS = 10_000


@dataclass
class Batch:
    """One poll's records, in order, ready to append (cheap to send between processes)."""

    raws: list[bytes]
    parts: list[tuple[str, int, list[int]]]  # (topic, partition, record offsets), in raws order
    offsets: dict[Partition, int]  # next offset of each partition: stored with the events
    packed: list[Packed] | None  # validation results, when the fetcher validated
    lag: dict[Partition, int]
    polled: float  # time.monotonic() of the poll (the same clock in every process)

    def items(self) -> list[Incoming]:
        """The records as ledger items, each with its Kafka position."""
        out: list[Incoming] = []
        raws = iter(self.raws)
        for topic, part, offsets in self.parts:
            out.extend(
                Incoming(next(raws), Source("kafka", topic, part, offset)) for offset in offsets
            )
        return out


class Fetcher:
    """Polls one topic; ``emit`` receives messages, ``ask`` gets the worker's answers."""

    def __init__(
        self,
        config: WorkerConfig,
        emit: Callable[[Message], None],
        ask: Callable[[Message], Any],
        validate: bool,
    ) -> None:
        self.config = config
        self.emit = emit
        self.ask = ask
        self.validate = validate
        self.consumer: Any = None
        self.stopping = False

    # -- setup -------------------------------------------------------------------------------
    def open(self) -> None:
        """Connect, then subscribe to the group (or assign every partition)."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        instance = self.config.instance_id
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.config.bootstrap,
            "group_id": self.config.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": self.config.batch,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            "client_id": f"tachograph-ingest-{self.config.group}" + (f"-{instance}" if instance else ""),
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": SESSION_TIMEOUT_MS // 3,
        }
        cfg.update(self.config.consumer_config)
        # Tansu holds a SyncGroup for up to 0.8 x the session timeout; a request timeout below
        # that makes the client drop the connection and start the join again, for ever
        cfg["request_timeout_ms"] = max(cfg.get("request_timeout_ms", 30_000), cfg["session_timeout_ms"] + 5_000)
        try:
            self.consumer = KafkaConsumer(**cfg)
        except KafkaError as e:
            raise BrokerUnavailableError(f"cannot reach Kafka at {self.config.bootstrap}: {e}") from e
        if not self.config.assign:
            member = load_member_id(self.config.member_file) if self.config.member_file else None
            if member is not None and resume_member(self.consumer, member):
                log.info("rejoining group %s as member %s (instance %s)", self.config.group, member, instance)
            self.consumer.subscribe([self.config.topic], listener=_listener(self))
            return
        deadline = time.monotonic() + 30
        parts = self.consumer.partitions_for_topic(self.config.topic)
        while not parts and time.monotonic() < deadline and not self.stopping:
            time.sleep(0.2)
            parts = self.consumer.partitions_for_topic(self.config.topic)
        if not parts:
            raise IngestConfigError(f"topic {self.config.topic!r} has no partitions (missing?)")
        tps = [TopicPartition(self.config.topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.assigned(tps)

    def assigned(self, tps: list[Any]) -> None:
        """Seek each newly assigned partition to the offset the worker's ledger holds."""
        if self.config.member_file is not None and not self.config.assign:
            save_member_id(self.config.member_file, self.consumer.group_metadata().member_id,
                           self.config.group, self.config.bootstrap)
        stored: dict[Partition, int] = self.ask(("assigned", [(tp.topic, tp.partition) for tp in tps])) or {}
        for tp in tps:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)

    def revoked(self, tps: list[Any]) -> None:
        """Wait until the worker has appended everything polled from these partitions (when
        closing, the worker has stopped appending: no one would answer)."""
        if not self.stopping:
            self.ask(("revoked", [(tp.topic, tp.partition) for tp in tps]))

    def close(self) -> None:
        """Leave the group (no offset commit: the ledger holds the offsets); the member id is
        then no longer valid, so a restart joins afresh."""
        if self.consumer is not None:
            self.stopping = True
            self.consumer.close(autocommit=False)
            self.consumer = None
            if self.config.member_file is not None and not self.config.assign:
                forget_member_id(self.config.member_file)

    # -- the loop ----------------------------------------------------------------------------
    def poll_once(self) -> None:
        """One poll; emits a batch, or idle. Retriable broker errors are waited out here."""
        polled = self._poll()
        if self.stopping:
            return
        now = time.monotonic()
        raws: list[bytes] = []
        parts: list[tuple[str, int, list[int]]] = []
        offsets: dict[Partition, int] = {}
        for tp, records in polled.items():
            if not records:
                continue
            raws.extend(r.value if r.value is not None else b"" for r in records)
            parts.append((tp.topic, tp.partition, [r.offset for r in records]))
            offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
        lag = self._lag()
        if not raws:
            self.emit(("idle", lag))
            return
        packed = validate_packed(raws) if self.validate else None
        self.emit(("batch", Batch(raws, parts, offsets, packed, lag, now)))

    def _poll(self) -> dict[Any, list[Any]]:
        from kafka.errors import KafkaError

        failing_since: float | None = None
        while True:
            try:
                return self.consumer.poll(  # type: ignore[no-any-return]
                    timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch
                )
            except KafkaError as e:
                if not getattr(e, "retriable", False) and not isinstance(e, OSError):
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.config.broker_timeout_s:
                    raise BrokerUnavailableError(
                        f"Kafka at {self.config.bootstrap} kept failing for "
                        f"{self.config.broker_timeout_s:g}s: {e}"
                    ) from e
                self.emit(("broker_error", str(e)))
                time.sleep(0.5)
                if self.stopping:
                    return {}

    def _lag(self) -> dict[Partition, int]:
        out: dict[Partition, int] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            pos = self.consumer.position(tp, timeout_ms=0) if high is not None else None
            if high is not None and pos is not None:
                out[(tp.topic, tp.partition)] = max(0, high - pos)
        return out

    def commit(self, offsets: dict[Partition, int]) -> None:
        """Kafka's committed offsets, for lag dashboards only: never read back."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        if self.config.assign and not self.config.group:
            return
        commits = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            self.consumer.commit_async(commits)
        except KafkaError as e:  # informational only: the ledger holds the real offsets
            log.warning("informational Kafka offset commit failed: %s", e)


def _listener(fetcher: Fetcher) -> Any:
    from kafka import ConsumerRebalanceListener

    class SeekToLedger(ConsumerRebalanceListener):  # type: ignore[misc]
        """Drain before partitions go; seek to the ledger's offsets when they come."""

        def on_partitions_revoked(self, revoked: Any) -> None:
            fetcher.revoked(list(revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            fetcher.assigned(list(assigned))

    return SeekToLedger()


# -- the fetcher in a process of its own -------------------------------------------------------
class FetcherProcess:
    """A Fetcher (validating each batch) in a child process, talking over a pipe."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        ctx = multiprocessing.get_context("fork")  # inherits the config; never touches the ledger
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_run_fetcher, args=(config, child, os.getpid()), daemon=True,
            name=f"tacho-fetch-{config.topic}",
        )
        self.proc.start()
        child.close()

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None when none came within ``timeout`` seconds."""
        try:
            if not self.conn.poll(timeout):
                return None
            msg: Message = self.conn.recv()
        except (EOFError, OSError):
            raise self._ended() from None
        if msg[0] == "error":
            kind = {"BrokerUnavailableError": BrokerUnavailableError, "IngestConfigError": IngestConfigError}
            raise kind.get(msg[1], TachographError)(msg[2])
        return msg

    def answer(self, reply: Any) -> None:
        """Answer the question last received."""
        self._send(("answer", reply))

    def appended(self, offsets: dict[Partition, int]) -> None:
        """Tell the fetcher what is in the ledger (it commits it to Kafka, informationally)."""
        self._send(("appended", offsets))

    def _send(self, msg: Message) -> None:
        try:
            self.conn.send(msg)
        except OSError:
            raise self._ended() from None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the fetcher (it leaves the group) and wait for it."""
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        deadline = time.monotonic() + timeout
        while self.proc.is_alive() and time.monotonic() < deadline:
            try:  # keep reading so that a fetcher blocked on a full pipe sees the stop
                if self.conn.poll(0.05):
                    self.conn.recv()
            except (EOFError, OSError):
                break
        self.proc.join(max(0.0, deadline - time.monotonic()))
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()

    def _ended(self) -> TachographError:
        self.proc.join(1.0)
        return TachographError(
            f"the Kafka fetch process ended unexpectedly (exit code {self.proc.exitcode}); "
            "nothing it polled after the last appended batch was stored: restart the worker"
        )


def _run_fetcher(config: WorkerConfig, conn: Connection, parent: int) -> None:
    """The fetch process: poll and validate until told to stop or the worker is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the worker's graceful-stop handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    _exit_with_parent(parent)
    tune_for_batches()  # leave the worker's inherited objects (and their pages) alone; see gcpolicy
    control: list[Message] = []

    def ask(question: Message) -> Any:
        conn.send(question)
        while True:
            msg = conn.recv()
            if msg[0] == "answer":
                return msg[1]
            if msg[0] == "stop":  # the worker will not answer: poll nothing more, just leave
                fetcher.stopping = True
                return None
            control.append(msg)

    fetcher = Fetcher(config, conn.send, ask, validate=True)
    try:
        fetcher.open()
        while not fetcher.stopping:
            while conn.poll(0):
                control.append(conn.recv())
            for msg in control:
                if msg[0] == "stop":
                    fetcher.stopping = True
                elif msg[0] == "appended":
                    fetcher.commit(msg[1])
            control.clear()
            if not fetcher.stopping:
                fetcher.poll_once()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the worker is gone: nothing polled here was appended, nothing is lost
    except TachographError as e:
        _send_error(conn, type(e).__name__, str(e))
    except Exception as e:
        _send_error(conn, type(e).__name__, f"Kafka fetch failed: {type(e).__name__}: {e}")
    finally:
        try:
            fetcher.close()
        except Exception as e:
            log.warning("closing the Kafka consumer failed: %s", e)
        conn.close()


def _send_error(conn: Connection, kind: str, message: str) -> None:
    with contextlib.suppress(OSError):
        conn.send(("error", kind, message))


def _exit_with_parent(parent: int) -> None:
    """Exit as soon as the worker is gone (a SIGKILLed worker must leave nothing behind)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
