"""``tacho serve`` starts without what it needs only later (issue 17: cold start under 1 s).

The webhook sender's HTTP client (httpx, httpcore, trio, the CA bundle), the console's templates
(jinja2), the replay machinery, OTLP's protobuf and the other commands' terminal output (rich)
are loaded on first use, not while the server starts; the webhook sender still delivers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from api.webhooks import SIGNATURE_HEADER
from api.webhooks_dispatch import DeliveryPolicy, WebhookDispatcher
from api.webhooks_store import WebhookStore
from tests.factories import event, items, make_ledger
from tests.harness import wait_until

LAZY = ("httpx", "httpcore", "trio", "certifi", "jinja2", "rich", "rich.progress", "api.cli_ledger",
        "replay.engine", "replay.steps", "replay.revision_replay", "tachograph.agents",
        "google.protobuf", "opentelemetry.proto")
"""Modules the server must not import to start (each is loaded by the first request needing it)."""

START = """
import asyncio, json, sys
from api.cli import build_app
build_app("serve")
import uvicorn
from api.app import create_app
from api.settings import Settings

app = create_app(Settings(), housekeeping=True)

async def serve_briefly():
    async with app.router.lifespan_context(app):  # housekeeping, verification, webhook sender
        pass

asyncio.run(serve_briefly())
print(json.dumps(sorted(m for m in LAZY if m in sys.modules)))
"""


def test_the_server_starts_and_stops_without_the_modules_it_loads_on_first_use(tmp_path: Path) -> None:
    code = f"LAZY = {LAZY!r}\n{START}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TACHO_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_importing_the_app_after_the_serve_command_loads_none_of_them() -> None:
    code = (f"import json, sys; from api.cli import build_app; build_app('serve'); import api.app; "
            f"print(json.dumps(sorted(m for m in {LAZY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


class _Receiver(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append({"path": self.path, "signature": self.headers.get(SIGNATURE_HEADER),
                          "body": json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Receiver", (_Receiver,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_the_webhook_sender_builds_its_client_on_the_first_delivery_and_delivers(
        tmp_path: Path, receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = receiver
    ledger = make_ledger(tmp_path / "l.db")
    store = WebhookStore(tmp_path / "keys" / "webhooks.db")
    ep = store.create_endpoint("acme", f"{url}/hook", ["approval.requested"], "", ledger.store.size(),
                               "whsec_x", time.time(), 10)
    sender = WebhookDispatcher(store, ledger.store, DeliveryPolicy(allow_private=True), poll_s=0.05).start()
    try:
        time.sleep(0.2)  # rounds with nothing to send
        assert sender._http is None  # no client before there is something to send
        ledger.append(items([event("r1", 0, workspace="acme"),
                             event("r1", 1, "approval.requested",
                                   {"approval_id": "r1.a1", "summary": "s", "risk": "low"}, workspace="acme")]))
        wait_until(lambda: [d.status for d in store.deliveries(ep.id, None, 10)] == ["delivered"], 15,
                   what="the approval's notification delivered")
    finally:
        sender.stop()
    assert sender._http is None  # closed with the sender
    assert [(s["path"], s["body"]["kind"]) for s in seen] == [("/hook", "approval.requested")]
    assert seen[0]["signature"].startswith("v1=")
    store.close()


def test_a_webhook_sender_that_sent_nothing_stops_without_a_client(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.db")
    store = WebhookStore(tmp_path / "keys" / "webhooks.db")
    sender = WebhookDispatcher(store, ledger.store, DeliveryPolicy(), poll_s=0.05).start()
    sender.stop()
    assert sender._http is None
    store.close()
