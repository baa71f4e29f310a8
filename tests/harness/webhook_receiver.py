"""A webhook receiver for tests, run as its own process: ``python tests/harness/webhook_receiver.py PORT``.

Standard library only. ``POST /hooks/<name>`` is a webhook endpoint; it verifies the signature
as docs/webhooks.md tells receivers to (the ``verify`` below is the documented snippet), records
the request, and answers 200, or 500 for the first ``fail_first`` attempts of each notification
(``-1``: always), after sleeping ``delay`` seconds. Control (JSON):

- ``POST /_control/config`` ``{"name", "secret", "fail_first"?, "delay"?}`` sets up an endpoint;
- ``GET /_control/log`` returns every request recorded, oldest first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_S = 300


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float) -> str | None:
    """Why a delivery must be rejected, or None if its signature and timestamp are good."""
    try:
        ts = int(timestamp)
    except ValueError:
        return "bad timestamp"
    if abs(now - ts) > TOLERANCE_S:
        return "timestamp too old or in the future (a replay?)"
    expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "signature mismatch"
    return None


class State:
    """Endpoints' configuration and the requests seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.attempts: dict[tuple[str, str], int] = {}


STATE = State()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, payload: Any = None) -> None:
        body = json.dumps(payload if payload is not None else {}).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the sender gave up waiting (a slow endpoint)
            pass

    def do_GET(self) -> None:
        if self.path == "/_control/log":
            with STATE.lock:
                self._reply(200, list(STATE.log))
        else:
            self._reply(404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/_control/config":
            cfg = json.loads(body)
            with STATE.lock:
                STATE.config[cfg["name"]] = cfg
            self._reply(200)
            return
        if not self.path.startswith("/hooks/"):
            self._reply(404)
            return
        name = self.path.removeprefix("/hooks/")
        with STATE.lock:
            cfg = dict(STATE.config.get(name, {}))
        nid = self.headers.get("Tacho-Notification-Id", "")
        why = verify(cfg.get("secret", ""), self.headers.get("Tacho-Timestamp", ""),
                     self.headers.get("Tacho-Signature", ""), body, time.time())
        with STATE.lock:
            seen = STATE.attempts.get((name, nid), 0) + 1
            STATE.attempts[(name, nid)] = seen
        fail_first = int(cfg.get("fail_first", 0))
        code = 401 if why else 500 if fail_first < 0 or seen <= fail_first else 200
        time.sleep(float(cfg.get("delay", 0)))
        record = {"name": name, "id": nid, "attempt": self.headers.get("Tacho-Delivery-Attempt"),
                  "timestamp": self.headers.get("Tacho-Timestamp"), "verified": why is None,
                  "reason": why, "status": code, "received": time.time(),
                  "content_type": self.headers.get("Content-Type"), "body": json.loads(body or b"null")}
        with STATE.lock:
            STATE.log.append(record)
        self._reply(code)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
