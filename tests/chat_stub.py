"""A tiny OpenAI-compatible chat-completions server on 127.0.0.1 that answers deterministically.

A stand-in for a paid API in tests (a real llama.cpp server may replace it): the answer depends
only on the model name and the request. A request with ``tools`` gets a call of the first tool,
whose arguments name the model's ``lean``; otherwise the content is ``refund`` when the last user
message mentions money and the model's ``fallback`` word otherwise. Usage counts about four
characters a token. Every request body is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Persona:
    """How one model name answers."""

    fallback: str
    lean: str


PERSONAS = {
    "gpt-4o-mini": Persona("billing", "gold"),
    "SmolLM2-135M-Instruct": Persona("billing", "gold"),
    "candidate-same": Persona("billing", "gold"),
    "candidate-other": Persona("technical", "silver"),
}


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion for a request body."""
    model = str(body.get("model", ""))
    persona = PERSONAS.get(model, Persona("unknown", "none"))
    messages = body.get("messages") or []
    last = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
    if body.get("tools"):
        name = body["tools"][0]["function"]["name"]
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{len(messages)}", "type": "function",
            "function": {"name": name, "arguments": json.dumps({"tier": persona.lean})}}]}
        finish, out = "tool_calls", name
    else:
        content = "refund" if "money" in last.lower() else persona.fallback
        message, finish, out = {"role": "assistant", "content": content}, "stop", content
    prompt = sum(_tokens(str(m.get("content") or "")) + 4 for m in messages)
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 1_767_225_600, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": _tokens(out),
                      "total_tokens": prompt + _tokens(out)}}


@dataclass
class ChatStub:
    """The running server: its base URL (``.../v1``) and the request bodies it got."""

    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def chat_stub() -> Iterator[ChatStub]:
    """Serve :func:`answer` on a free port until the block ends."""
    stub = ChatStub("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.send_error(404, "only /v1/chat/completions")
                return
            stub.requests.append(body)
            data = json.dumps(answer(body)).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="chat-stub", daemon=True)
    thread.start()
    stub.base_url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
