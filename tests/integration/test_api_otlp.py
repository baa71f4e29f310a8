"""OTLP ingest over a real uvicorn server, fed by the real opentelemetry-sdk OTLP/HTTP exporter."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from domain.canonical import loads
from tests.integration.api_support import Api, make_api


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans):  # type: ignore[no-untyped-def]
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Api, str]]:
    a = make_api(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(a.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    yield a, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    a.ledger.store.close()


def _agent_run(provider: TracerProvider, fail_tool: bool = False) -> str:
    tracer = provider.get_tracer("test-agent")
    with tracer.start_as_current_span("invoke_agent triage") as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_attribute("gen_ai.agent.name", "triage-agent")
        with tracer.start_as_current_span("chat gpt-4.1-mini") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.provider.name", "openai")
            chat.set_attribute("gen_ai.request.model", "gpt-4.1-mini")
            chat.set_attribute("gen_ai.usage.input_tokens", 120)
            chat.set_attribute("gen_ai.usage.output_tokens", 30)
        with tracer.start_as_current_span("kb.search") as tool:
            tool.set_attribute("openinference.span.kind", "TOOL")
            tool.set_attribute("tool.name", "kb.search")
            tool.set_attribute("input.value", '{"q": "refund"}')
            if fail_tool:
                tool.set_status(Status(StatusCode.ERROR, "kb down"))
        with tracer.start_as_current_span("llm") as llm:
            llm.set_attribute("openinference.span.kind", "LLM")
            llm.set_attribute("llm.model_name", "claude-haiku-4")
            llm.set_attribute("llm.provider", "anthropic")
            llm.set_attribute("llm.token_count.prompt", 50)
            llm.set_attribute("llm.token_count.completion", 7)
        return format(root.get_span_context().trace_id, "032x")


def _run_types(a: Api, run: str) -> list[str]:
    return [r.event_type or "" for r in a.ledger.store.run_entries("acme", run)]


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_sdk_exporter_posts_protobuf_spans_that_become_a_run(served, compression) -> None:
    a, url = served
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=a.auth("publisher"),
                                compression=compression)
    provider = TracerProvider(resource=Resource.create({"service.name": "triage-svc",
                                                        "service.version": "2.4.0"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # one export per span: root last
    run = _agent_run(provider, fail_tool=True)
    provider.shutdown()
    assert _run_types(a, run) == ["run.started", "model.called", "tool.called", "model.called",
                                  "run.completed"]
    rows = a.ledger.store.run_entries("acme", run)
    events = [loads(r.data)["event"] for r in rows]
    assert events[1]["data"]["model"] == "gpt-4.1-mini" and events[1]["data"]["input_tokens"] == 120
    assert events[2]["data"]["status"] == "error" and events[2]["data"]["args"] == {"q": "refund"}
    assert events[3]["data"]["provider"] == "anthropic" and events[3]["data"]["output_tokens"] == 7
    assert events[4]["data"]["outcome"] == "succeeded"
    assert events[0]["trace_id"] == run


def test_otlp_json_and_resent_spans_are_idempotent(served) -> None:
    a, url = served
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    run = _agent_run(provider)
    provider.shutdown()
    body = json_format.MessageToDict(encode_spans(keep.spans))
    for rs in body["resourceSpans"]:  # OTLP/JSON writes ids in hex
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        import base64
                        s[k] = base64.b64decode(s[k]).hex()
    raw = orjson.dumps(body)
    h = {**a.auth("publisher"), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    for _ in range(2):
        r = httpx.post(f"{url}/v1/traces", content=gzip.compress(raw), headers=h)
        assert r.status_code == 200, r.text
        assert "rejectedSpans" not in r.json().get("partialSuccess", {})
    assert _run_types(a, run) == ["run.started", "model.called", "tool.called", "model.called",
                                  "run.completed"]


def test_bad_otlp_bodies_get_4xx_and_no_500(served) -> None:
    a, url = served
    h = a.auth("publisher")
    r = httpx.post(f"{url}/v1/traces", content=b"\xff\xff\xff", headers={**h,
                   "Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and "decode" in r.json()["message"]
    r = httpx.post(f"{url}/v1/traces", content=b"{]", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400
    r = httpx.post(f"{url}/v1/traces", content=b"x", headers={**h, "Content-Type": "text/csv"})
    assert r.status_code == 415
    assert a.ledger.store.size() == 0
