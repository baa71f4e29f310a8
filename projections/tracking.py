"""The ledger as eventsourcing's notification source, and the runner that keeps a view current.

eventsourcing's ``ProjectionRunner`` subscribes to an ``Application``'s recorder; our ledger is
neither (its entries are the public contract's bytes, hashed verbatim; docs/decisions/0008). So
this module writes only what the library lacks:

- ``LedgerSource``: the ledger in the place of the application (name ``ledger``, notification
  id = ledger index + 1, ``subscribe``, ``max_notification_id``);
- ``LedgerSubscription``: the entries after a position, in batches (one transaction of the view
  per batch, not per entry), blocking when caught up and woken by a waiting reader;
- ``LedgerProjectionRunner``: the library's ``BaseProjectionRunner`` (its processing and stop
  threads, ``run_forever``, ``wait``, error propagation) with the ledger subscribed in place of
  an application.

``ReadModel`` puts a projection, its runner and the reads' bound wait together.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from threading import Event, Thread
from typing import Any, Generic, Self, TypeVar

from eventsourcing.persistence import Tracking, TrackingRecorder, WaitInterruptedError
from eventsourcing.projection import BaseProjectionRunner, Projection

from domain.ports import EntryRow, LedgerStore
from projections.errors import ProjectionError
from projections.sqlview import LEDGER, SQLView

log = logging.getLogger(__name__)

BATCH = 5_000
"""Ledger entries per batch (one view transaction each)."""
IDLE_POLL_S = 0.1
"""How often a caught-up subscription looks for new entries when no reader wakes it."""


class ProjectionLagError(ProjectionError):
    """A read model did not reach the ledger position a read needs within the bound (HTTP 503)."""


@dataclass(frozen=True)
class LedgerBatch:
    """Entries [``start``, ``end``) of the ledger: the "domain event" a view's projection
    processes, with ``Tracking(LEDGER, end)``. ``rows`` holds only the entries of the
    projection's topics (an empty batch still moves the position)."""

    start: int
    end: int
    rows: list[EntryRow] = field(default_factory=list)


def selects(topics: Sequence[str]) -> Callable[[EntryRow], bool]:
    """Which entries a projection's ``topics`` take: events (of a run) and records whose type is
    listed (every event when ``topics`` is empty)."""
    wanted = frozenset(topics)

    def take(row: EntryRow) -> bool:
        if row.kind == "event":
            return row.workspace is not None and row.run_id is not None and (
                not wanted or row.event_type in wanted)
        return row.kind == "record" and row.event_type in wanted

    return take


class LedgerSubscription(Iterator[tuple[LedgerBatch, Tracking]]):
    """Batches of ledger entries after a position, with the tracking each brings the view to.

    ``follow``: block when caught up (a runner's) instead of stopping (a one-off catch-up).
    ``floor``: the view's recorded position, read before each batch, so that entries another
    process has already projected into a shared view are not read again.
    """

    def __init__(self, store: LedgerStore, gt: int | None, topics: Sequence[str] = (), *,
                 batch_size: int = BATCH, follow: bool = True, idle_s: float = IDLE_POLL_S,
                 floor: Callable[[], int] | None = None, until: int | None = None) -> None:
        self.store = store
        self.position = gt or 0
        self.take = selects(topics)
        self.batch_size = batch_size
        self.follow = follow
        self.idle_s = idle_s
        self.floor = floor
        self.until = until
        self.read = 0  # entries read from the store (what a test of "resumes" counts)
        self._stopped = Event()
        self._nudged = Event()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        self.stop()

    def __iter__(self) -> Self:
        return self

    def stop(self) -> None:
        """End the iteration (a blocked ``__next__`` returns at once)."""
        self._stopped.set()
        self._nudged.set()

    def nudge(self) -> None:
        """Look for new entries now (a reader is waiting for a position)."""
        self._nudged.set()

    def __next__(self) -> tuple[LedgerBatch, Tracking]:
        while not self._stopped.is_set():
            if self.floor is not None:
                self.position = max(self.position, self.floor())
            size = self.store.size()
            if self.until is not None:
                size = min(size, self.until)
            if size > self.position:
                start = self.position
                rows = list(self.store.entries(start, min(size, start + self.batch_size)))
                if not rows:  # the store had fewer entries than it said
                    if not self.follow:
                        break
                else:
                    self.read += len(rows)
                    end = rows[-1].index + 1
                    self.position = end
                    return LedgerBatch(start, end, [r for r in rows if self.take(r)]), Tracking(LEDGER, end)
            if not self.follow:
                break
            self._nudged.wait(self.idle_s)
            self._nudged.clear()
        raise StopIteration


class LedgerSource:
    """The ledger where the library's runner expects an application: the notification source."""

    name = LEDGER

    def __init__(self, store: LedgerStore, batch_size: int = BATCH, idle_s: float = IDLE_POLL_S) -> None:
        self.store = store
        self.batch_size = batch_size
        self.idle_s = idle_s

    def max_notification_id(self) -> int:
        """The id of the newest entry's notification (the ledger's size)."""
        return self.store.size()

    def subscribe(self, gt: int | None, topics: Sequence[str] = (), *, follow: bool = True,
                  floor: Callable[[], int] | None = None, until: int | None = None) -> LedgerSubscription:
        """The entries after notification ``gt`` (its position), in batches."""
        return LedgerSubscription(self.store, gt, topics, batch_size=self.batch_size, follow=follow,
                                  idle_s=self.idle_s, floor=floor, until=until)

    def close(self) -> None:
        """Nothing to close: the store belongs to whoever built it."""


TView = TypeVar("TView", bound=SQLView)


class LedgerProjectionRunner(BaseProjectionRunner[LedgerSource]):
    """eventsourcing's projection runner over the ledger: the same threads, ``run_forever``,
    ``wait`` and ``stop``; only the construction (which would build an Application) is ours."""

    def __init__(self, *, source: LedgerSource, projection: Projection[Any]) -> None:
        view: TrackingRecorder = projection.view
        self.projection = projection
        self.view = view
        self._projection = projection
        self._is_interrupted = Event()
        self._has_called_stop = False
        self._tracking_recorder = view
        self.app = source
        self.app_name = source.name
        floor = view.position if isinstance(view, SQLView) else None
        self._ledger_subscription = source.subscribe(view.max_tracking_id(source.name),
                                                     projection.topics, floor=floor)
        self._subscription = self._ledger_subscription  # type: ignore[assignment]
        self._thread_error: BaseException | None = None
        self._stop_thread = Thread(
            target=self._stop_subscription_when_stopping,
            kwargs={"subscription": self._subscription, "is_stopping": self._is_interrupted},
            name=f"projection-{projection.name}-stop", daemon=True,
        )
        self._stop_thread.start()
        self._processing_thread = Thread(
            target=self._process_events_loop,
            kwargs={"subscription": self._subscription, "projection": projection,
                    "is_stopping": self._is_interrupted, "runner": weakref.ref(self)},
            name=f"projection-{projection.name}", daemon=True,
        )
        self._processing_thread.start()

    @property
    def subscription(self) -> LedgerSubscription:
        """The runner's subscription to the ledger."""
        return self._ledger_subscription

    def wait(self, notification_id: int | None, timeout: float = 1.0) -> None:
        """Wake the subscription, then the library's wait for the view to reach ``notification_id``."""
        self._ledger_subscription.nudge()
        super().wait(notification_id, timeout)

    @property
    def error(self) -> BaseException | None:
        """What stopped the processing thread, if it failed."""
        return self._thread_error


class ReadModel(Generic[TView]):
    """A projection into a view, the runner that keeps it current, and reads that wait for it.

    Without a started runner (a CLI command, a test client without lifespan) a read brings the
    view up to date itself, in its own thread, from the recorded position.
    """

    def __init__(self, store: LedgerStore, projection: Projection[TView], *, wait_s: float = 10.0,
                 batch_size: int = BATCH, idle_s: float = IDLE_POLL_S) -> None:
        self.store = store
        self.projection = projection
        self.view: TView = projection.view
        self.source = LedgerSource(store, batch_size, idle_s)
        self.wait_s = wait_s
        self.runner: LedgerProjectionRunner | None = None
        self._lock = threading.Lock()
        self.view.open(store.get_meta("origin") or "", store.size())

    @property
    def name(self) -> str:
        """The projection's name."""
        return self.projection.name

    def start(self) -> None:
        """Run the projection in the background (resuming from the recorded position)."""
        with self._lock:
            if self.runner is None or self.runner.is_interrupted.is_set():
                self.runner = LedgerProjectionRunner(source=self.source, projection=self.projection)

    def stop(self) -> None:
        """Stop the background runner (its current batch commits or rolls back whole)."""
        with self._lock:
            runner, self.runner = self.runner, None
        if runner is not None:
            runner.stop()
            runner._processing_thread.join(timeout=30)

    def close(self) -> None:
        """Stop, and close the view's connections."""
        self.stop()
        closer = getattr(self.view, "close", None)
        if closer is not None:
            closer()

    def catch_up(self, until: int | None = None) -> int:
        """Project every entry after the recorded position (up to ``until``), in this thread;
        the position reached."""
        with self._lock:
            sub = self.source.subscribe(self.view.position(), self.projection.topics, follow=False,
                                        floor=self.view.position, until=until)
            for batch, tracking in sub:
                self.projection.process_event(batch, tracking)
            return self.view.position()

    def ready(self, position: int | None = None) -> None:
        """Return once the view has projected the ledger up to ``position`` (default: its size
        now, so a read sees every append that returned before it); ProjectionLagError after
        ``wait_s``, a failed projection's error as ProjectionError."""
        target = self.store.size() if position is None else position
        if self.view.has_tracking_id(LEDGER, target):
            return
        runner = self.runner
        if runner is None:
            self.catch_up()
            return
        if runner.is_interrupted.is_set():
            self._restart(runner)
            runner = self.runner
            assert runner is not None
        started = time.monotonic()
        try:
            runner.wait(target, timeout=self.wait_s)
        except TimeoutError as e:
            behind = target - self.view.position()
            raise ProjectionLagError(
                f"the {self.name} read model is {behind:,} ledger entries behind after "
                f"{time.monotonic() - started:.1f}s; retry shortly") from e
        except WaitInterruptedError as e:
            raise ProjectionError(f"the {self.name} projection stopped; retry") from e
        except ProjectionError:
            raise
        except Exception as e:  # the processing thread's error, re-raised by the library's wait
            raise ProjectionError(f"the {self.name} projection failed: {e}") from e

    def _restart(self, runner: LedgerProjectionRunner) -> None:
        """Start a new runner after one failed (it resumes from the recorded position)."""
        error = runner.error
        if error is not None:
            log.error("projection %s failed, restarting: %r", self.name, error)
        with self._lock:
            if self.runner is runner:
                self.runner = LedgerProjectionRunner(source=self.source, projection=self.projection)
