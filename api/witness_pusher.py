"""Push each new checkpoint to the configured witnesses and keep their cosignatures.

One background thread per witness watches the store's newest checkpoint (a cheap read, so it
sees checkpoints signed by any process on the same store). Appends never wait for a witness:
the only write is a short insert of the cosignature, outside the append transaction. A witness
that is down is retried with exponential backoff; one that reports a rollback or a fork is
logged as an error at every new checkpoint and never retried for the same one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from api.witness_client import TERMINAL, Outcome, client, exchange
from domain.errors import TachographError
from domain.ledger import Ledger
from domain.ports import CosignatureRow
from domain.witness import WitnessConfig

log = logging.getLogger("tachograph.witness")


@dataclass
class WitnessState:
    """What the pusher knows about one witness."""

    config: WitnessConfig
    held: int = 0  # the size the witness last said it holds (a guess until it answers)
    cosigned: int | None = None  # the newest checkpoint size it cosigned for us
    last: Outcome | None = None
    failures: int = 0
    next_try: float = 0.0
    wake: threading.Event = field(default_factory=threading.Event)


class WitnessPusher:
    """Background pusher; ``start()``, ``notify()`` on a new checkpoint, ``stop()``."""

    def __init__(
        self,
        ledger: Ledger,
        witnesses: Sequence[WitnessConfig],
        *,
        timeout_s: float = 5.0,
        retry_max_s: float = 60.0,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.states = [WitnessState(w) for w in witnesses if w.url]
        self.timeout_s = timeout_s
        self.retry_max_s = retry_max_s
        self.poll_s = poll_s
        self.clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._changed = threading.Condition()

    def start(self) -> WitnessPusher:
        """Start one thread per witness (idempotent)."""
        if self._threads:
            return self
        self._stop.clear()
        for st in self.states:
            t = threading.Thread(target=self._run, args=(st,), name=f"witness {st.config.name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def notify(self) -> None:
        """A new checkpoint may be there: look now rather than at the next poll."""
        for st in self.states:
            st.wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads (an exchange in flight ends within the HTTP timeout)."""
        self._stop.set()
        self.notify()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def wait_settled(self, size: int, timeout: float) -> list[Outcome]:
        """Wait until every witness answered once about checkpoint ``size`` (bounded); outcomes."""
        deadline = time.monotonic() + timeout
        self.notify()
        with self._changed:
            while not all(st.last is not None and st.last.size >= size for st in self.states):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return [
            st.last
            if st.last is not None and st.last.size >= size
            else Outcome(st.config.verifier.ident, size, "unreachable", f"no answer within {timeout:g}s")
            for st in self.states
        ]

    def status(self) -> list[dict[str, object]]:
        """Each witness's last outcome (for readiness checks and the CLI)."""
        return [
            {"witness": st.config.verifier.ident, "url": st.config.url, "cosigned_size": st.cosigned,
             **({"last": st.last.to_json()} if st.last else {})}
            for st in self.states
        ]

    def checks(self) -> dict[str, str]:
        """``{"witness <name+id>": last outcome}`` in words (for ``/readyz``)."""
        out = {}
        for st in self.states:
            last = st.last
            if last is None:
                text = "not asked yet"
            elif last.status == "cosigned":
                text = f"cosigned size {last.size}"
            else:
                text = f"{last.status.upper()} at size {last.size}: {last.reason}"
            out[f"witness {st.config.verifier.ident}"] = text
        return out

    # -- the per-witness loop ---------------------------------------------------------------

    def _run(self, st: WitnessState) -> None:
        with client(self.timeout_s) as http:
            while not self._stop.is_set():
                wait = self.poll_s
                try:
                    wait = self._step(st, http)
                except TachographError as e:  # a store read or write failed: again at the next poll
                    log.error("witness %s: %s", st.config.name, e)
                except Exception:  # this thread must not die unnoticed: logged in full, then retried
                    log.exception("witness %s: the pusher failed; retrying at the next poll", st.config.name)
                st.wake.wait(wait)
                st.wake.clear()

    def _step(self, st: WitnessState, http: httpx.Client) -> float:
        """Push the newest checkpoint if this witness has not answered for it; the next wait."""
        row = self.ledger.store.latest_checkpoint()
        if row is None or st.cosigned == row.size:
            return self.poll_s
        if st.last is not None and st.last.size == row.size and st.last.status in TERMINAL:
            return self.poll_s  # already reported loudly for this checkpoint
        now = self.clock()
        if now < st.next_try:  # backing off (a newer checkpoint waits for the retry too)
            return min(self.poll_s, st.next_try - now)
        outcome = exchange(http, st.config, row.note, self.ledger.consistency_proof, old=st.held)
        self._record(st, outcome)
        if outcome.status == "cosigned":
            return 0.0  # a newer checkpoint may already be waiting
        return self.poll_s if outcome.status in TERMINAL else max(0.0, st.next_try - self.clock())

    def _record(self, st: WitnessState, outcome: Outcome) -> None:
        name = st.config.name
        if outcome.witness_size is not None and outcome.witness_size <= outcome.size:
            st.held = outcome.witness_size  # where to start next time (never past our own tree)
        if outcome.status == "cosigned" and outcome.cosignature is not None:
            c = outcome.cosignature
            self.ledger.store.add_cosignatures([CosignatureRow(outcome.size, c.witness, c.line, c.timestamp)])
            st.cosigned = outcome.size
            st.failures = 0
            st.next_try = 0.0
            log.info("witness %s cosigned checkpoint %d", name, outcome.size)
        elif outcome.status in TERMINAL:
            st.next_try = 0.0
            log.error("witness %s: %s: %s", name, outcome.status.upper(), outcome.reason)
        else:
            st.failures += 1
            delay = min(self.retry_max_s, 0.5 * 2 ** min(st.failures - 1, 16))
            st.next_try = self.clock() + delay
            log.warning("witness %s: %s (%s); retrying in %.1fs", name, outcome.status, outcome.reason, delay)
        with self._changed:
            st.last = outcome
            self._changed.notify_all()


def build_pusher(ledger: Ledger, witnesses: Sequence[WitnessConfig], timeout_s: float,
                 retry_max_s: float) -> WitnessPusher | None:
    """A pusher for the witnesses that have a URL, or None when there are none."""
    online = [w for w in witnesses if w.url]
    if not online:
        return None
    return WitnessPusher(ledger, online, timeout_s=timeout_s, retry_max_s=retry_max_s)
