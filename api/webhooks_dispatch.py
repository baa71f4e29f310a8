"""Deliver webhook notifications: follow the ledger, enqueue, POST with retries (``tacho serve``).

One thread follows the ledger from the position kept in the webhook file and enqueues a
delivery per matching endpoint (position and deliveries in one transaction). Due deliveries are
sent by a pool of workers, at most one worker per endpoint at a time, each request bounded by a
timeout: a slow or dead endpoint holds one worker, never the others' deliveries. Delivery is
at least once: a crash between a receiver's 2xx and recording it sends that notification again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from api.settings import Settings
from api.webhooks import (
    ATTEMPT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Notification,
    check_kinds,
    check_url,
    decisions_from_records,
    new_secret,
    notification_of,
    private_target,
    signature,
    wanted,
)
from api.webhooks_store import Delivery, Endpoint, Outgoing, WebhookStore
from domain.ports import LedgerStore
from tachograph.contract.canonical import loads

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("tachograph.webhooks")

BATCH = 5_000
"""Ledger entries read per step while catching up."""
USER_AGENT = "tachograph-webhooks/1"


@dataclass(frozen=True)
class DeliveryPolicy:
    """Timeouts, retries and bounds of delivery."""

    max_attempts: int = 12
    backoff_s: float = 10.0
    backoff_max_s: float = 3600.0
    timeout_s: float = 10.0
    allow_private: bool = False
    workers: int = 16
    max_pending: int = 10_000  # per endpoint; beyond, a notification is recorded failed at once
    keep: int = 1_000  # finished deliveries kept per endpoint

    def delay(self, attempts: int) -> float:
        """Wait before the next attempt after ``attempts`` failed ones: doubling, capped."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** min(attempts - 1, 30)))

    @staticmethod
    def of(settings: Settings) -> DeliveryPolicy:
        """The policy the settings describe."""
        return DeliveryPolicy(settings.webhook_max_attempts, settings.webhook_backoff_s,
                              settings.webhook_backoff_max_s, settings.webhook_timeout_s,
                              settings.webhook_allow_private, settings.webhook_workers)


class WebhookDispatcher:
    """The background follower and senders; ``start()``, ``stop()``; ``step()`` runs one round."""

    def __init__(self, store: WebhookStore, ledger: LedgerStore, policy: DeliveryPolicy,
                 clock: Callable[[], float] = time.time, poll_s: float = 0.25) -> None:
        self.store = store
        self.ledger = ledger
        self.policy = policy
        self.clock = clock
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tacho-webhooks", daemon=True)
        self._pool: ThreadPoolExecutor | None = None
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    def _client(self) -> httpx.Client:
        """The HTTP client, built on the first delivery: building it (httpcore, trio, the CA
        bundle) costs a fifth of a second that ``tacho serve`` need not pay before it answers."""
        with self._http_lock:
            if self._http is None:
                import httpx

                timeout = httpx.Timeout(self.policy.timeout_s)
                limits = httpx.Limits(max_connections=self.policy.workers * 2,
                                      max_keepalive_connections=self.policy.workers)
                self._http = httpx.Client(timeout=timeout, limits=limits, follow_redirects=False,
                                          headers={"User-Agent": USER_AGENT})
            return self._http

    def start(self) -> WebhookDispatcher:
        """Start the follower thread and the sender pool."""
        self._pool = ThreadPoolExecutor(self.policy.workers, thread_name_prefix="tacho-webhook-send")
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop; requests in flight end within the timeout and unsent deliveries stay pending."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._http_lock:
            if self._http is not None:  # built only once something was sent
                self._http.close()
                self._http = None

    def follow(self) -> tuple[int, bool]:
        """Enqueue the notifications of ledger entries past the position; (added, caught up)."""
        size = self.ledger.size()  # before the endpoints: one created later starts at or after it
        endpoints = self.store.endpoints()
        position = self.store.position()
        if position is None:  # the first start: from now on, and from where any endpoint begins
            position = min([size] + [ep.from_index for ep in endpoints])
            self.store.enqueue([], position, self.clock(), self.policy.max_pending)
        if position >= size:
            return 0, True
        if not endpoints:
            self.store.enqueue([], size, self.clock(), self.policy.max_pending)
            return 0, True
        end = min(size, position + BATCH)
        by_workspace: dict[str, list[Endpoint]] = defaultdict(list)
        for ep in endpoints:
            by_workspace[ep.workspace].append(ep)
        decisions = decisions_from_records()
        items = []
        for row in self.ledger.entries(position, end):
            if row.workspace not in by_workspace or not wanted(row.kind, row.event_type, decisions):
                continue
            try:
                note = notification_of(row.index, loads(row.data), decisions)
            except (KeyError, TypeError, ValueError, AttributeError) as e:  # never stop on one entry
                log.error("webhooks: ledger entry %d is not one they can read (%r); skipped", row.index, e)
                continue
            if note is None or not self._asks_a_person(note):
                continue
            items += [(ep.id, note) for ep in by_workspace[row.workspace]
                      if note.kind in ep.kinds and row.index >= ep.from_index]
        return self.store.enqueue(items, end, self.clock(), self.policy.max_pending), end >= size

    def _asks_a_person(self, note: Notification) -> bool:
        """False for an ``approval.requested`` that no person is asked to decide: a replay's (it has
        no row in the approvals index) or one whose id another request already holds."""
        if note.kind != "approval.requested":
            return True
        row = self.ledger.approval(note.workspace, str(note.data.get("approval_id")))
        return row is not None and row.requested_index == note.ledger_index

    def step(self) -> bool:
        """One round: follow the ledger, hand due endpoints to the senders; whether caught up."""
        _, caught_up = self.follow()
        with self._busy_lock:
            busy = set(self._busy)
        free = self.policy.workers - len(busy)
        if self._pool is None or free <= 0:
            return caught_up
        for endpoint_id in self.store.due_endpoints(self.clock(), free, exclude=busy):
            with self._busy_lock:
                self._busy.add(endpoint_id)
            self._pool.submit(self._drain, endpoint_id)
        return caught_up

    def _run(self) -> None:
        pruned = 0.0
        while not self._stop.is_set():
            caught_up = True
            try:
                caught_up = self.step()
                if self.clock() - pruned > 60:
                    self.store.prune(self.policy.keep)
                    pruned = self.clock()
            except Exception:  # a failed round (store busy, ledger unreadable) is logged and retried
                log.exception("webhook round failed; retrying in %.2fs", self.poll_s)
            if caught_up:
                self._stop.wait(self.poll_s)

    def _drain(self, endpoint_id: str) -> None:
        """Send an endpoint's due deliveries in order until none is due or one fails."""
        try:
            while not self._stop.is_set():
                out = self.store.next_due(endpoint_id, self.clock())
                if out is None or not self.attempt(out):
                    break
        except Exception:
            log.exception("webhook endpoint %s: sending failed; retrying at the next round", endpoint_id)
        finally:
            with self._busy_lock:
                self._busy.discard(endpoint_id)

    def attempt(self, out: Outgoing) -> bool:
        """POST one delivery, signed now; record the result; whether the receiver took it (2xx)."""
        host = urlsplit(out.url).hostname or ""
        error = None if self.policy.allow_private else private_target(host, resolve=True)
        code: int | None = None
        if error is None:
            ts = int(self.clock())
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts),
                       SIGNATURE_HEADER: signature(out.secret, ts, out.body),
                       ID_HEADER: out.notification_id, ATTEMPT_HEADER: str(out.attempts + 1)}
            import httpx  # loaded by _client() already; here for the exceptions

            try:
                with self._client().stream("POST", out.url, content=out.body, headers=headers) as resp:
                    code = resp.status_code  # the receiver's body is never read
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as e:
                error = f"{type(e).__name__}: {e}"[:500] or type(e).__name__
        ok = code is not None and 200 <= code < 300
        attempts = out.attempts + 1
        if ok:
            status, nxt = "delivered", None
        elif attempts >= self.policy.max_attempts:
            status, nxt = "failed", None
        else:
            status, nxt = "pending", self.clock() + self.policy.delay(attempts)
        if not ok and error is None:
            error = f"HTTP {code}"
        self.store.attempted(out.id, status, nxt, code, error, self.clock())
        if not ok:
            log.warning("webhook delivery %d (%s) to %s: attempt %d %s; %s", out.id, out.notification_id,
                        host, attempts, error, status if nxt is None else f"retry in {nxt - self.clock():.1f}s")
        return ok


class Webhooks:
    """Webhook endpoints for the API, and (``dispatch``, under ``tacho serve``) their delivery."""

    def __init__(self, settings: Settings, ledger: LedgerStore, clock: Callable[[], float],
                 dispatch: bool = False) -> None:
        self.settings = settings
        self.ledger = ledger
        self.clock = clock
        self.dispatch = dispatch
        self.policy = DeliveryPolicy.of(settings)
        self.dispatcher: WebhookDispatcher | None = None
        self._store: WebhookStore | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> WebhookStore:
        """The webhook file, opened on first use."""
        with self._lock:
            if self._store is None:
                self._store = WebhookStore(self.settings.data_dir / "keys" / "webhooks.db")
            return self._store

    def create(self, workspace: str, url: str, kinds: list[str] | None, description: str) -> tuple[Endpoint, str]:
        """A new endpoint for notifications from now on, and its secret (returned only here)."""
        check_url(url, self.policy.allow_private)
        secret = new_secret()
        ep = self.store.create_endpoint(workspace, url, check_kinds(kinds), description, self.ledger.size(),
                                        secret, self.clock(), self.settings.webhook_max_endpoints)
        return ep, secret

    def deliveries(self, workspace: str, endpoint_id: str, status: str | None, limit: int) -> list[Delivery]:
        """Recent deliveries of a workspace's endpoint, newest first."""
        self.store.endpoint(workspace, endpoint_id)
        return self.store.deliveries(endpoint_id, status, limit)

    def start(self) -> None:
        """Start delivering (only when asked to dispatch)."""
        if self.dispatch and self.dispatcher is None:
            self.dispatcher = WebhookDispatcher(self.store, self.ledger, self.policy, self.clock).start()

    def stop(self) -> None:
        """Stop delivering and close the file."""
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
