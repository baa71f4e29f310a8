"""The OpenAI-compatible chat-completions adapter over real HTTP against a local test server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tachograph.builder import seq_event_id
from tachograph.context import Context
from tachograph.contract.canonical import loads
from tachograph.errors import (
    ModelAuthError,
    ModelRequestError,
    ModelResponseError,
    ModelUnavailableError,
)
from tachograph.models import (
    ChatRequest,
    HttpModelConfig,
    ModelRegistry,
    OpenAIChatModel,
    Price,
    PriceTable,
)
from tachograph.runtime import Runtime
from tachograph.transports import CollectingTransport
from tests.factories import FakeClock

KEY = "sk-test-do-not-log-0123456789"


class ChatServer:
    """A tiny chat-completions server: answers from a script of (status, body, delay, headers)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, Any, float, dict[str, str]]] = []
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                status, payload, delay, headers = (
                    server.script.pop(0) if server.script else (200, server.ok("fine"), 0.0, {})
                )
                if delay:
                    time.sleep(delay)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @staticmethod
    def ok(content: str, tin: int = 12, tout: int = 3) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1", "object": "chat.completion", "model": "local-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout},
        }


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    return KEY


def _adapter(server: ChatServer, sleeps: list[float], **kw: Any) -> OpenAIChatModel:
    return OpenAIChatModel(base_url=server.url, model="local-model", api_key_env="TEST_LLM_KEY",
                           sleep=sleeps.append, clock=time.monotonic, **kw)


REQ = ChatRequest("local-model", ({"role": "user", "content": "hi"},), {"temperature": 0})


def test_a_completion_sends_the_chat_request_shape_and_bearer_key_and_parses_usage(chat_server, api_key):
    chat_server.script.append((200, ChatServer.ok("hello", 21, 4), 0.0, {}))
    reply = _adapter(chat_server, []).complete(REQ)
    sent = chat_server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["body"] == {"model": "local-model", "messages": [{"role": "user", "content": "hi"}],
                            "temperature": 0}
    assert (reply.content, reply.input_tokens, reply.output_tokens, reply.finish_reason) == ("hello", 21, 4, "stop")
    assert reply.latency_ms >= 0


def test_rate_limits_and_server_errors_are_retried_with_exponential_backoff(chat_server, api_key):
    chat_server.script += [(429, {"error": {"message": "slow down"}}, 0.0, {}),
                           (503, "unavailable", 0.0, {}),
                           (200, ChatServer.ok("third time"), 0.0, {})]
    sleeps: list[float] = []
    reply = _adapter(chat_server, sleeps, backoff_s=0.5).complete(REQ)
    assert reply.content == "third time"
    assert sleeps == [0.5, 1.0]
    assert len(chat_server.requests) == 3


def test_a_numeric_retry_after_header_sets_the_wait(chat_server, api_key):
    chat_server.script += [(429, "{}", 0.0, {"Retry-After": "7"}), (200, ChatServer.ok("ok"), 0.0, {})]
    sleeps: list[float] = []
    _adapter(chat_server, sleeps).complete(REQ)
    assert sleeps == [7.0]


def test_timeouts_are_retried_then_reported_as_unavailable(chat_server, api_key):
    chat_server.script += [(200, ChatServer.ok("late"), 0.6, {})] * 3
    sleeps: list[float] = []
    with pytest.raises(ModelUnavailableError, match="gave up after 3 attempts; last: timed out"):
        _adapter(chat_server, sleeps, timeout_s=0.2, max_retries=2, backoff_s=0.1).complete(REQ)
    assert sleeps == [0.1, 0.2]
    assert len(chat_server.requests) == 3


def test_persistent_server_errors_give_up_after_the_retries(chat_server, api_key):
    chat_server.script += [(500, {"error": {"message": "boom"}}, 0.0, {})] * 5
    with pytest.raises(ModelUnavailableError, match="HTTP 500: boom"):
        _adapter(chat_server, [], max_retries=4).complete(REQ)
    assert len(chat_server.requests) == 5


def test_refused_credentials_fail_at_once_without_showing_the_key(chat_server, api_key):
    chat_server.script.append((401, {"error": {"message": "bad key"}}, 0.0, {}))
    adapter = _adapter(chat_server, [])
    with pytest.raises(ModelAuthError) as err:
        adapter.complete(REQ)
    assert "TEST_LLM_KEY" in str(err.value)
    assert KEY not in str(err.value) and KEY not in repr(adapter)
    assert len(chat_server.requests) == 1


def test_a_bad_request_fails_at_once_with_the_servers_message(chat_server, api_key):
    chat_server.script.append((400, {"error": {"message": "unknown parameter foo"}}, 0.0, {}))
    sleeps: list[float] = []
    with pytest.raises(ModelRequestError, match="HTTP 400: unknown parameter foo"):
        _adapter(chat_server, sleeps).complete(REQ)
    assert sleeps == []


def test_a_body_that_is_not_a_completion_is_a_response_error(chat_server, api_key):
    chat_server.script.append((200, {"choices": []}, 0.0, {}))
    with pytest.raises(ModelResponseError, match="not a chat-completions response"):
        _adapter(chat_server, []).complete(REQ)


def test_a_missing_key_variable_is_named_before_any_request(chat_server, monkeypatch):
    monkeypatch.delenv("TEST_LLM_KEY", raising=False)
    with pytest.raises(ModelAuthError, match="TEST_LLM_KEY"):
        _adapter(chat_server, []).complete(REQ)
    assert chat_server.requests == []


def say_hello(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """An agent that asks the model once."""
    return {"said": ctx.llm("hello").content}


def test_a_live_run_over_http_records_usage_and_exact_cost(chat_server, api_key):
    chat_server.script.append((200, ChatServer.ok("done", 1000, 500), 0.0, {}))
    prices = PriceTable({"local-model": Price(Decimal("0.40"), Decimal("1.60"))})
    models = ModelRegistry({"local-model": HttpModelConfig(chat_server.url, "local-model", "TEST_LLM_KEY")},
                           sleep=lambda s: None, clock=time.monotonic, prices=prices)
    transport = CollectingTransport()
    rt = Runtime(workspace="acme", transport=transport, models=models, model="local-model", clock=FakeClock(),
                 run_ids=lambda: "http-1", event_ids=seq_event_id)
    run = rt.run(say_hello, {}, workflow="wf")
    events = run.events
    called = events[1]["data"]
    assert (called["provider"], called["input_tokens"], called["output_tokens"]) == ("openai-compatible", 1000, 500)
    assert Decimal(called["cost_usd"]) == Decimal("0.0012") and "priced" not in called
    assert events[-1]["data"] == {"outcome": "succeeded", "result": {"said": "done"}}
    assert (run.usage.model_calls, run.usage.tokens, run.usage.cost_usd) == (1, 1500, Decimal("0.0012"))
    assert [loads(v) for v in transport.values()] == events  # every event was sent as it was made
