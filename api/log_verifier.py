"""The ledger's verification status, kept up to date beside the server (``GET /v1/log/verification``).

The first round verifies the whole ledger (``verify_log``, as ``tacho verify`` does with
``--allow-unsigned-tail``); every later one verifies only what was appended, and the checkpoints
signed, since the last verified point (``verify_tail``). Under ``tacho serve`` the rounds run on a
background thread and a request only reads the latest result; without it (an app whose lifespan
never ran, as in tests) the request brings the result up to date itself, one caller at a time.
A round that fails drops the verified state: the next change is verified in full again. Every
``full_every_s`` (``TACHO_VERIFY_FULL_EVERY_S``, a day by default) a round verifies the whole
ledger again, so that a rewrite of an entry verified long ago, which the incremental rounds do
not read, is found within that time even on a server that never restarts.

A full round over a large ledger (``isolate_from`` entries or more, and a store that can be
opened again by another process) runs in a process of its own (``domain/verify_round.py``): it
neither holds this process's interpreter lock while the server starts and answers (on two cores
it takes the other one) nor leaves its peak memory behind (every run's last entry while it
scans, some 400 MB at ten million entries). It hands back the verified state, bounded to the
runs verified most recently (``domain/verify_chains.py``): later rounds read any other run back
from the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from api.metrics import Metrics
from domain.approvals import DECISIONS_FROM, required_from
from domain.errors import TachographError
from domain.ledger import Ledger
from domain.verify import VerifyResult
from domain.verify_chains import KEPT_RUNS
from domain.verify_round import FullRound
from domain.verify_scan import RangeReader
from domain.verify_state import VerifyState
from domain.verify_tail import StoreReader, looks_runs_up, verify_tail

log = logging.getLogger("tachograph.verification")

Kind = Literal["full", "incremental"]

ISOLATE_FROM = 50_000
"""Entries from which a full round runs in a process of its own (below, starting one costs more
than the round: about 0.3 s of CPU against 0.2 s for 50,000 entries)."""


@dataclass(frozen=True)
class Status:
    """The result of the latest verification round and what the round was."""

    result: VerifyResult
    kind: Kind
    verified_from: int  # entries verified before the round (0 for a full one)
    checked_at: float  # when the round ended (the app's clock)
    took_s: float


class _Stopped(Exception):
    """The verifier is stopping: the round in progress is abandoned."""


class LogVerifier:
    """Verification rounds over one ledger, on its own thread once started."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float], metrics: Metrics,
                 interval_s: float = 1.0, max_round: int = 1 << 20, isolate_from: int | None = ISOLATE_FROM,
                 kept_runs: int = KEPT_RUNS, full_every_s: float | None = None) -> None:
        self.ledger = ledger
        self.clock = clock
        self.metrics = metrics
        self.interval_s = interval_s
        self.max_round = max_round  # entries one incremental round takes at most
        self.isolate_from = isolate_from  # None: every round in this process
        self.kept_runs = kept_runs  # runs the state holds in memory when the store can look others up
        self.isolated_rounds = 0  # full rounds run in a process of their own
        self.full_every_s = full_every_s  # verify the whole ledger again this often (None: never)
        self._full_at: float | None = None  # when the last full round ended (the app's clock)
        self.status: Status | None = None
        self.state: VerifyState | None = None
        self.running = False
        self.background = False
        self.behind = False  # the last round stopped short of the ledger's size (max_round)
        self._seen: tuple[int, str | None] | None = None  # (size, newest note) of the last round
        self._looks_started = 0  # steps begun, and the last one done (``refresh`` waits on them)
        self._looks_done = 0
        self._lock = threading.Lock()  # one round at a time
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Verify on a background thread from now on (a round at once); again after ``stop``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tacho-verification", daemon=True)
        self.background = True
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, abandoning a round in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        self.background = False

    def current(self) -> Status | None:
        """The latest status; brought up to date first when no thread keeps it so."""
        if not self.background:
            self.step()
        return self.status

    def refresh(self, timeout: float) -> Status | None:
        """The status once a round has looked at the ledger as it is now (at most ``timeout``
        seconds of waiting; then the latest there is)."""
        if not self.background:
            self.step()
            return self.status
        deadline = time.monotonic() + timeout
        with self._changed:
            target = self._looks_started + 1  # the next look starts after this call
        self._wake.set()
        with self._changed:
            while self._looks_done < target and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return self.status

    def step(self) -> Status | None:
        """Look at the ledger: one round, if it or its checkpoints changed since the last one."""
        with self._lock:
            with self._changed:
                self._looks_started += 1
                look = self._looks_started
            try:
                return self._round()
            finally:
                with self._changed:
                    self._looks_done = look
                    self._changed.notify_all()

    def _round(self) -> Status | None:
        reader = self._reader()
        store = self.ledger.store
        size = reader.size()
        latest = store.latest_checkpoint()
        seen = (size, latest.note if latest is not None else None)
        full_due = (self.full_every_s is not None and self._full_at is not None
                    and self.clock() - self._full_at >= self.full_every_s)
        if full_due:
            self.state = None  # re-read every entry: the rounds since read none verified before
        elif seen == self._seen:
            return self.status
        self._set_running(True)
        began = time.perf_counter()
        try:
            if self.state is None:
                kind: Kind = "full"
                verified_from = 0
                result = self._full(reader, size)
            else:
                kind, verified_from = "incremental", self.state.position
                result = self._tail(reader, self.state, min(size, verified_from + self.max_round))
        except BaseException as e:
            self.state = None  # a tail left part-way: the next round verifies in full
            if isinstance(e, _Stopped):
                return self.status
            raise
        finally:
            self._set_running(False)
        took = time.perf_counter() - began
        if kind == "full":
            self._full_at = self.clock()
        self.state = result.state
        # what the next round compares with: a round cut short (max_round) is not done
        self._seen = (self.state.position, seen[1]) if self.state is not None else seen
        self.behind = self.state is not None and self.state.position < size
        self.metrics.verifications.labels(kind).inc()
        self.metrics.verified_entries.set(result.entries)
        self.metrics.verification_ok.set(1 if result.ok else 0)
        if not result.ok:
            log.error("ledger verification (%s, from entry %d) failed at %s: %s", kind, verified_from,
                      result.position, result.reason)
        with self._changed:
            self.status = Status(result, kind, verified_from, self.clock(), took)
        return self.status

    def _set_running(self, running: bool) -> None:
        with self._changed:
            self.running = running
            self._changed.notify_all()

    def _reader(self) -> RangeReader:
        store = self.ledger.store
        reader = getattr(store, "range_reader", None)
        return reader() if callable(reader) else StoreReader(store)

    def _full(self, reader: RangeReader, size: int) -> VerifyResult:
        store = self.ledger.store
        keys = [k for k in (store.get_meta("initial_vkey"), self.ledger.signer.vkey) if k]
        args = FullRound(
            reader,
            [c.note for c in store.checkpoints() if c.size <= size],
            list(dict.fromkeys(keys)),
            store.get_meta("origin"),
            required_from(store.get_meta(DECISIONS_FROM)),
            self.kept_runs if looks_runs_up(reader) else None,
        )
        if self.isolate_from is not None and size >= self.isolate_from and not isinstance(reader, StoreReader):
            self.isolated_rounds += 1
            try:
                return args.run_apart(self._stop.is_set)
            except TachographError:
                if self._stop.is_set():
                    raise _Stopped from None
                raise
        return args.run(self._check_stop)

    def _tail(self, reader: RangeReader, state: VerifyState, end: int) -> VerifyResult:
        store = self.ledger.store
        notes = [c.note for c in store.checkpoints() if c.size <= end]
        return verify_tail(state, reader, notes, store.node, end=end, allow_unsigned_tail=True,
                           progress=self._check_stop)

    def _check_stop(self, _position: int) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # a failed round (e.g. the store busy) is logged; the next one retries
                log.exception("verification round failed; retrying in %.2fs", self.interval_s)
            if not self.behind:
                self._wake.wait(self.interval_s)
                self._wake.clear()
