"""Fixtures and helpers for the HTTP API tests: an app over a fresh data dir, keys per role."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.bootstrap import build_ledger
from api.deps import Limits, Services
from api.keys_store import ROLES, KeyStore
from api.settings import Settings
from domain.ledger import Ledger
from domain.workload import Workload
from tachograph.contract.canonical import dumps


class Clock:
    """A wall clock the test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Api:
    """A running app (in process, real ASGI) with one key per role of workspace ``acme``."""

    app: FastAPI
    client: TestClient
    ledger: Ledger
    keys: KeyStore
    clock: Clock
    data_dir: Path
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def services(self) -> Services:
        return self.app.state.services  # type: ignore[no-any-return]

    def auth(self, role: str) -> dict[str, str]:
        """Authorization header of the role's key."""
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    def key(self, workspace: str, role: str, **kw: Any) -> str:
        """A new key's secret."""
        return self.keys.create(workspace, role, **kw)[1]


def make_api(tmp_path: Path, limits: Limits | None = None, **overrides: Any) -> Api:
    """A fresh API over its own data dir (``overrides``: other settings)."""
    settings = Settings(data_dir=tmp_path / "data", checkpoint_interval_s=0.5, **overrides)
    clock = Clock()
    ledger = build_ledger(settings)
    keys = KeyStore(settings.data_dir / "keys" / "apikeys.db", clock)
    app = create_app(settings, ledger=ledger, keys=keys, clock=clock, limits=limits)
    api = Api(app, TestClient(app), ledger, keys, clock, settings.data_dir)
    for role in ROLES:
        api.secrets[role] = api.key("acme", role)
    return api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """An API over a fresh data dir."""
    a = make_api(tmp_path)
    yield a
    close_api(a)


def close_api(a: Api) -> None:
    """Wait for background replays, then close the client and the store."""
    a.services.replays.close()
    a.client.close()
    a.ledger.store.close()


def workload(runs: int = 6, seed: int = 5, workspaces: tuple[str, ...] = ("acme",)) -> list[dict[str, Any]]:
    """Deterministic contract events."""
    return list(Workload(seed=seed, runs=runs, workspaces=workspaces).events())


def publish(api: Api, events: list[dict[str, Any]], role: str = "publisher") -> dict[str, Any]:
    """POST events as a JSON array; the response body."""
    body = b"[" + b",".join(dumps(e) for e in events) + b"]"
    r = api.client.post("/v1/events", content=body, headers={**api.auth(role),
                        "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def audit_reads(api: Api, workspace: str = "acme", rtype: str = "audit.read") -> list[dict[str, Any]]:
    """The workspace's platform records of one type (reads recorded in the ledger), oldest first."""
    from tachograph.contract.canonical import loads

    return [loads(r.data)["record"] for r in api.ledger.store.records(workspace, limit=10**6,
                                                                       record_type=rtype)]


@contextmanager
def serving(app: Any, port: int) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1:``port`` until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
