"""Approvals: a person's decision (the API's and the console's one path) and waiting for one.

A decision is an ``approval.decision`` platform record (``Ledger.append_records`` checks it
against the approval in the same transaction); nothing is written into the agent's run. Waiters
of this process are woken at once; a decision made by another process sharing the ledger is seen
by reading the store every ``POLL_S`` while waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING

from fastapi.concurrency import run_in_threadpool

from api.audit_trail import actor
from api.keys_store import ApiKey
from domain.approvals import ApprovalRow, record_decision
from domain.errors import NotFoundError
from domain.ledger import iso

if TYPE_CHECKING:
    from api.deps import Services

POLL_S = 0.2
"""How often a long poll reads the store (decisions made by other processes)."""
MAX_WAIT_S = 30
"""Longest ``?wait=`` a long poll may ask for."""

Key = tuple[str, str]


def identity(name: str, key_id: str) -> str:
    """Who decided, as written into the ledger (``by``): the key's name and id."""
    return f"{name} (apikey:{key_id})" if name else f"apikey:{key_id}"


class ApprovalSignals:
    """Wakes this process's long polls of an approval when it is decided here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[Key, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def subscribe(self, key: Key) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        """A fresh event of the running loop, set when ``key`` is decided."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.setdefault(key, set()).add(waiter)
        return waiter

    def unsubscribe(self, key: Key, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            waiters = self._waiting.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiting[key]

    def notify(self, key: Key) -> None:
        """Wake every waiter of ``key`` (callable from any thread)."""
        with self._lock:
            waiters = list(self._waiting.get(key, ()))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)


def get(services: Services, workspace: str, approval_id: str) -> ApprovalRow:
    """One approval of the workspace (NotFoundError, also for another workspace's)."""
    row = services.ledger.store.approval(workspace, approval_id)
    if row is None:
        raise NotFoundError(f"no approval {approval_id!r}")
    return row


def decide(services: Services, key: ApiKey, approval_id: str, decision: str, reason: str | None,
           run_id: str | None = None) -> ApprovalRow:
    """Record a person's decision (``by`` is the key's person); return the decided approval.

    ``run_id``: the run the person saw the approval in (the console), which it must belong to.
    Raises NotFoundError, or ApprovalConflict when it was decided already, expired or its run ended.
    """
    now = services.clock()
    record_decision(services.ledger, key.workspace, approval_id, decision, identity(key.label, key.id),
                    actor(key), reason, iso(now), now, run_id)
    services.approval_signals.notify((key.workspace, approval_id))
    return get(services, key.workspace, approval_id)


async def wait(services: Services, workspace: str, approval_id: str, wait_s: float) -> ApprovalRow:
    """The approval once it is no longer pending, or as it is after ``wait_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    key = (workspace, approval_id)
    waiter = services.approval_signals.subscribe(key)
    try:
        while True:
            waiter[1].clear()  # before reading: a decision after the read still wakes us
            row = await run_in_threadpool(get, services, workspace, approval_id)
            now = services.clock()
            left = deadline - loop.time()
            if row.status(now) != "pending" or left <= 0:
                return row
            if row.expires_at is not None:
                left = min(left, max(row.expires_at - now, 0.0) + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter[1].wait(), timeout=min(POLL_S, left))
    finally:
        services.approval_signals.unsubscribe(key, waiter)
