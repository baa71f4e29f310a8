"""What ``tacho serve`` does between requests: sign the tail when due, expire held events."""

from __future__ import annotations

import logging
import threading

from domain.ledger import Ledger

log = logging.getLogger("tachograph.serve")


class Housekeeper:
    """A daemon thread that signs a checkpoint when one is due and quarantines held events whose
    gap never filled; requests never wait for it (it only takes the store's write lock briefly)."""

    def __init__(self, ledger: Ledger, tick_s: float | None = None) -> None:
        self.ledger = ledger
        cfg = ledger.config
        self.tick_s = tick_s or max(0.05, min(cfg.checkpoint_interval_s, cfg.held_timeout_s, 5.0) / 2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tacho-housekeeping", daemon=True)
        self.checkpoints = 0
        self.expired = 0

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for its current step to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def step(self) -> None:
        """One round: expire held events, then sign the tail if a checkpoint is due."""
        expired = self.ledger.expire_held()
        if expired.quarantined:
            self.expired += expired.quarantined
            log.info("quarantined %d held events whose gap never filled", expired.quarantined)
        if expired.checkpoint is not None or self.ledger.checkpoint(force=False) is not None:
            self.checkpoints += 1

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.step()
            except Exception:  # a failed round (e.g. the store busy) is logged; the next one retries
                log.exception("housekeeping round failed; retrying in %.2fs", self.tick_s)
