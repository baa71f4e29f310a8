"""The runtime's HTTP transport against the real API under uvicorn on 127.0.0.1: a platform that
is down and comes back gets every event exactly once; an event the platform refuses, or a
request it refuses, is a DeliveryError naming the event and the platform's reason; a client that
dies in the middle of a request is not an error of the server."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tachograph.builder import RunLog, RunSpec
from tachograph.contract.canonical import loads
from tachograph.errors import DeliveryError
from tachograph.transports import HttpTransport
from tests.harness import free_port
from tests.integration.api_support import Api, make_api, serving


class Recorder:
    """ASGI wrapper that notes the event ids of every ``POST /v1/events`` body the server got."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.posted: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/events":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording() -> Any:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                self.posted += [e["event_id"] for e in loads(b"".join(chunks))]
            return message

        await self.app(scope, recording, send)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = make_api(tmp_path)
    yield a
    a.ledger.store.close()


def run_events(run_id: str, steps: int) -> list[tuple[str, bytes]]:
    """(event id, canonical bytes) of a run with ``steps`` tool calls, built by the runtime's builder."""
    log = RunLog(RunSpec("acme", run_id, "transport-check", {"id": "t-agent", "version": "1"}))
    out = [log.build("run.started", log.spec.started_data(), "2026-11-20T10:00:00Z")]
    for n in range(steps):
        out.append(log.build("tool.called", {"call_id": f"t-{n}", "tool": "noop", "args": {"n": n}, "status": "ok",
                                             "latency_ms": 1, "side_effect": "none"}, f"2026-11-20T10:00:{n + 1:02d}Z"))
    return [(event["event_id"], raw) for event, raw in out]


def stored(api: Api, run_id: str) -> list[str]:
    return [str(r.event_id) for r in api.ledger.store.run_entries("acme", run_id)]


def test_a_platform_that_is_down_then_back_gets_every_event_exactly_once(api) -> None:
    recorder = Recorder(api.app)
    port = free_port()
    transport = HttpTransport(f"http://127.0.0.1:{port}", api.secrets["publisher"], retry_s=30)
    events = run_events("down-then-up", 4)
    for event_id, raw in events:
        transport.send("down-then-up", event_id, raw)  # nothing listens yet: the sender retries
    time.sleep(1.0)
    assert transport.queued == len(events)  # what a crash now would lose
    with serving(recorder, port):
        transport.flush(30)
        assert transport.queued == 0
        ids = [event_id for event_id, _ in events]
        assert stored(api, "down-then-up") == ids
        assert recorder.posted == ids  # each posted once, after the platform came back
        transport.close(5)


def test_an_event_the_platform_refuses_is_a_delivery_error_naming_it_and_the_reason(api) -> None:
    events = run_events("refused-item", 2)
    bad_id = "refused-item.bad"
    bad = events[1][1].replace(b'"seq":1', b'"seq":1,"unexpected":true').replace(
        events[1][0].encode(), bad_id.encode())
    with serving(api.app, free_port()) as url:
        transport = HttpTransport(url, api.secrets["publisher"])
        transport.send("refused-item", events[0][0], events[0][1])
        transport.send("refused-item", bad_id, bad)
        with pytest.raises(DeliveryError) as failed:
            transport.flush(10)
        [(event_id, reason)] = failed.value.failures
        assert event_id == bad_id and reason.startswith("quarantined: ")
        assert "unexpected" in reason, reason
        assert bad_id in str(failed.value)
        assert stored(api, "refused-item") == [events[0][0]]  # the good one landed
        transport.close(5)


def test_a_request_the_platform_refuses_fails_every_event_in_it_at_once_without_retrying(api) -> None:
    events = run_events("bad-key", 1)
    with serving(api.app, free_port()) as url:
        transport = HttpTransport(url, "tacho_nosuchkey_0000", retry_s=30)
        t0 = time.monotonic()
        for event_id, raw in events:
            transport.send("bad-key", event_id, raw)
        with pytest.raises(DeliveryError) as failed:
            transport.flush(10)
        assert time.monotonic() - t0 < 5  # a 4xx is not retried for retry_s
        assert [f[0] for f in failed.value.failures] == [e for e, _ in events]
        assert all("POST /v1/events answered 401" in reason for _, reason in failed.value.failures)
        assert stored(api, "bad-key") == []
        transport.close(5)


class Caught(logging.Handler):
    """Keeps the records of one logger (uvicorn's own do not reach the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_that_dies_in_the_middle_of_its_body_is_not_a_server_error(api) -> None:
    caught = Caught()
    uvicorn_errors = logging.getLogger("uvicorn.error")
    with serving(api.app, free_port()) as url:
        uvicorn_errors.addHandler(caught)
        port = int(url.rsplit(":", 1)[1])
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:  # an agent killed mid-POST
                s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Authorization: Bearer " + api.secrets["publisher"].encode() +
                          b"\r\nContent-Length: 1000\r\n\r\n[{\"spec\":")
                time.sleep(0.3)  # the server is reading the body when the client goes
            time.sleep(0.5)
        finally:
            uvicorn_errors.removeHandler(caught)
        assert [r.getMessage() for r in caught.records] == []
        transport = HttpTransport(url, api.secrets["publisher"])  # and it goes on serving
        for event_id, raw in run_events("after-disconnect", 1):
            transport.send("after-disconnect", event_id, raw)
        transport.close(10)
        assert len(stored(api, "after-disconnect")) == 2
