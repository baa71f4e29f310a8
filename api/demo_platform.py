"""The platform side of ``tacho demo``'s agent stage: ``tacho serve`` in this process, the keys the
stage uses, and a person who decides approvals through the HTTP API.

The agents reach the platform only as an agent service would: their events over Kafka (or the
embedded transport), halts and approvals over HTTP with a publisher key. The person is Pat
Approver with an approver key: each approval an agent asks for is decided with
``POST /v1/approvals/{id}/decision``, as the console's Approve and Reject do.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console

from api.keys_store import ApiKey, KeyStore
from api.settings import Settings
from domain.errors import TachographError
from domain.ledger import Ledger
from ingest.devbroker import free_port
from tachograph.contract.canonical import loads
from tachograph.transports import Transport

PERSON = "Pat Approver"
KEYS_VALID_S = 3600.0
"""The stage's keys expire after an hour (and are revoked when it ends)."""
VISIBLE_TIMEOUT_S = 60.0
"""How long the person waits for a requested approval to reach the platform."""


class DemoPlatformError(TachographError):
    """The demo's in-process server did not start, or its person could not decide an approval."""


class InProcessServer:
    """``tacho serve`` (the API and the console) in this process: uvicorn on a free port of
    127.0.0.1, over the demo's own ledger."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> InProcessServer:
        """Serve on a thread; return once it accepts connections."""
        import uvicorn

        from api.app import create_app

        app = create_app(self.settings, ledger=self.ledger)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="tacho-demo-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DemoPlatformError(f"the demo's API server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Shut the server down (it lets requests in flight finish)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(30)

    def __enter__(self) -> InProcessServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class StageKeys:
    """The stage's two keys: the agents' publisher key and the person's approver key."""

    publisher: ApiKey
    publisher_secret: str
    approver: ApiKey
    approver_secret: str


def create_stage_keys(settings: Settings, workspace: str, clock: Callable[[], float] = time.time) -> StageKeys:
    """A publisher key for the agents and an approver key for Pat Approver, valid for an hour.
    Their secrets live only in this process (never printed, never written)."""
    store = KeyStore(settings.data_dir / "keys" / "apikeys.db", clock)
    try:
        expires = clock() + KEYS_VALID_S
        pub, pub_secret = store.create(workspace, "publisher", expires, label="tacho demo agents")
        approver, approver_secret = store.create(workspace, "approver", expires, label=PERSON)
    finally:
        store.close()
    return StageKeys(pub, pub_secret, approver, approver_secret)


def revoke_stage_keys(settings: Settings, keys: StageKeys) -> None:
    """Revoke both keys (the stage is over)."""
    store = KeyStore(settings.data_dir / "keys" / "apikeys.db", time.time)
    try:
        for key in (keys.publisher, keys.approver):
            store.revoke(key.id)
    finally:
        store.close()


def segment(value: str) -> str:
    """An id as one URL path segment (``/`` as ``%2F``, dots encoded)."""
    return quote(value, safe="").replace(".", "%2E")


@dataclass
class Decision:
    """A person's decision on one approval, as the API answered it."""

    approval_id: str
    run_id: str
    summary: str
    risk: str
    decision: str
    decided_by: str
    asked_at: float  # monotonic: when the agent sent its request
    decided_at: float  # monotonic: when the API answered the decision
    console_url: str | None = None  # the spotlight's link

    def to_json(self) -> dict[str, Any]:
        """The decision as JSON (times as seconds from request to decision)."""
        out = {"approval_id": self.approval_id, "run_id": self.run_id, "risk": self.risk,
               "decision": self.decision, "decided_by": self.decided_by,
               "seconds_to_decide": round(self.decided_at - self.asked_at, 3)}
        if self.console_url is not None:
            out["console_url"] = self.console_url
        return out


def verdict(risk: str) -> tuple[str, str]:
    """Pat Approver's rule: approve unless the risk is high."""
    if risk == "high":
        return "rejected", "high risk: not without a second look"
    return "approved", "within policy"


@dataclass
class _Asked:
    approval_id: str
    run_id: str
    summary: str
    risk: str
    at: float


@dataclass
class Person:
    """Pat Approver: decides each approval the demo's agents ask for through the HTTP API.

    An agent's request reaches the person through :class:`ApprovalTap` (as a notification would);
    the person waits until the platform shows it (it travels through Kafka and the ingest worker),
    then decides with ``POST /v1/approvals/{id}/decision`` and the approver key. The first one is
    the spotlight: its console link is printed while the agent waits, ``spotlight_pause_s`` before
    the decision.
    """

    api_url: str
    api_key: str
    out: Console
    spotlight_pause_s: float = 1.0
    decisions: list[Decision] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.first_run_id: str | None = None  # the spotlight's run
        self.spotlight_decided = threading.Event()
        self._asked: queue.Queue[_Asked | None] = queue.Queue()
        self._client = httpx.Client(base_url=self.api_url, timeout=30,
                                    headers={"Authorization": f"Bearer {self.api_key}"})
        self._thread = threading.Thread(target=self._loop, name="tacho-demo-person", daemon=True)

    def start(self) -> Person:
        """Start watching for requests."""
        self._thread.start()
        return self

    def asked(self, event: dict[str, Any]) -> None:
        """An agent sent ``approval.requested`` (called from the agent's thread)."""
        data = event["data"]
        if self.first_run_id is None:
            self.first_run_id = event["run_id"]
        self._asked.put(_Asked(data["approval_id"], event["run_id"], data["summary"], data["risk"],
                               time.monotonic()))

    def stop(self) -> None:
        """Stop after the requests already asked; raise what went wrong, if anything did."""
        self._asked.put(None)
        self._thread.join(VISIBLE_TIMEOUT_S + 30)
        self._client.close()
        if self.error is not None:
            raise DemoPlatformError(f"the demo's approver failed: {self.error}") from self.error

    @property
    def spotlight(self) -> Decision | None:
        """The first decision (whose console link was printed)."""
        return self.decisions[0] if self.decisions else None

    def _loop(self) -> None:
        while (asked := self._asked.get()) is not None:
            if self.error is not None:
                continue  # the waiting agent times out and says so
            try:
                self.decisions.append(self._decide(asked, spotlight=not self.decisions))
            except Exception as e:  # reported by stop(), which the demo always reaches
                self.error = e
            finally:
                self.spotlight_decided.set()

    def _decide(self, asked: _Asked, spotlight: bool) -> Decision:
        path = f"/v1/approvals/{segment(asked.approval_id)}"
        self._wait_visible(path, asked.approval_id)
        decision, reason = verdict(asked.risk)
        link = None
        if spotlight:
            link = f"{self.api_url}/console/runs/{asked.run_id}"
            self._show(asked, link, decision)
            time.sleep(self.spotlight_pause_s)
        resp = self._client.post(f"{path}/decision", json={"decision": decision, "reason": reason})
        if resp.status_code != 200:
            raise DemoPlatformError(f"POST {path}/decision answered {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        return Decision(asked.approval_id, asked.run_id, asked.summary, asked.risk, body["status"],
                        body["decided_by"], asked.at, time.monotonic(), link)

    def _wait_visible(self, path: str, approval_id: str) -> None:
        deadline = time.monotonic() + VISIBLE_TIMEOUT_S
        while True:
            resp = self._client.get(path)
            if resp.status_code == 200:
                return
            if resp.status_code != 404 or time.monotonic() > deadline:
                raise DemoPlatformError(f"approval {approval_id!r} never showed on the platform: "
                                        f"GET {path} answered {resp.status_code}")
            time.sleep(0.02)

    def _show(self, asked: _Asked, link: str, decision: str) -> None:
        self.out.print(f"run [bold]{asked.run_id}[/] waits for a person: {asked.summary} (risk {asked.risk})")
        self.out.print(f"  in the console, while it waits: {link} (sign in with an approver key)",
                       soft_wrap=True, markup=False)
        self.out.print(f"  {PERSON} decides through the API: POST /v1/approvals/{segment(asked.approval_id)}"
                       f"/decision → {decision}", soft_wrap=True, markup=False)


class ApprovalTap:
    """A transport that hands every event on, and tells the person when an agent asks for approval."""

    def __init__(self, inner: Transport, asked: Callable[[dict[str, Any]], None]) -> None:
        self.inner = inner
        self.asked = asked

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Send the event; an ``approval.requested`` is then shown to the person."""
        self.inner.send(key, event_id, value)
        if b'"approval.requested"' in value:
            event = loads(value)
            if event["type"] == "approval.requested":
                self.asked(event)

    def flush(self, timeout: float | None = None) -> None:
        """Flush the transport."""
        self.inner.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Close the transport."""
        self.inner.close(timeout)
