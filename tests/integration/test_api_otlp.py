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

from tachograph.contract.canonical import loads
from tests.integration.api_support import Api, close_api, make_api


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


def _export(keep: _Keep) -> bytes:
    return encode_spans(keep.spans).SerializeToString()


def test_a_span_over_a_bound_is_rejected_by_name_and_the_runs_other_spans_land(served) -> None:
    a, url = served
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("invoke_agent") as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        with tracer.start_as_current_span("chat") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.usage.input_tokens", 10**12)  # over the 10^9 maximum
        with tracer.start_as_current_span("tool") as tool:
            tool.set_attribute("openinference.span.kind", "TOOL")
            tool.set_attribute("tool.name", "kb.search")
        with tracer.start_as_current_span("chat 2") as chat2:
            chat2.set_attribute("gen_ai.operation.name", "chat")
            chat2.set_attribute("tachograph.cost_usd", 1e30)  # over the 10^12 USD maximum
        run = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()
    r = httpx.post(f"{url}/v1/traces", content=_export(keep),
                   headers={**a.auth("publisher"), "Content-Type": "application/x-protobuf"})
    assert r.status_code == 200, r.text
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    resp = ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 2
    message = resp.partial_success.error_message
    assert "data.input_tokens" in message and "1000000000" in message
    assert "data.cost_usd" in message and "1000000000000" in message
    # no gap left behind: the run's other events are stored with contiguous seqs, none held
    assert _run_types(a, run) == ["run.started", "tool.called", "run.completed"]
    assert [r.seq for r in a.ledger.store.run_entries("acme", run)] == [0, 1, 2]
    assert len(a.ledger.store.quarantine()) == 2


def test_an_export_over_the_batch_limit_gets_413_naming_the_limit_and_stores_nothing(tmp_path) -> None:
    from api.deps import Limits

    a = make_api(tmp_path, limits=Limits(max_batch=50))
    try:
        keep = _Keep()
        provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
        provider.add_span_processor(SimpleSpanProcessor(keep))
        tracer = provider.get_tracer("t")
        for _ in range(51):
            with tracer.start_as_current_span("chat") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
        provider.shutdown()
        h = {**a.auth("publisher"), "Content-Type": "application/x-protobuf"}
        r = a.client.post("/v1/traces", content=_export(keep), headers=h)
        assert r.status_code == 413 and "51 spans" in r.json()["message"]
        assert "limit is 50" in r.json()["message"]
        # 30 model spans of 30 traces open 30 runs: 60 events from 30 spans, over 50
        r = a.client.post("/v1/traces", content=encode_spans(keep.spans[:30]).SerializeToString(), headers=h)
        assert r.status_code == 413 and "limit is 50" in r.json()["message"]
        assert a.ledger.store.size() == 0
        r = a.client.post("/v1/traces", content=encode_spans(keep.spans[:25]).SerializeToString(), headers=h)
        assert r.status_code == 200 and a.ledger.store.size() == 50
    finally:
        a.client.close()
        a.ledger.store.close()


def _json_span(span_id: str, start_s: int, attrs: dict[str, object], parent: str = "") -> dict[str, object]:
    def value(v: object) -> dict[str, object]:
        if isinstance(v, int):
            return {"intValue": str(v)}
        return {"stringValue": str(v)}

    return {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "parentSpanId": parent,
            "name": span_id, "startTimeUnixNano": str(start_s * 10**9),
            "endTimeUnixNano": str((start_s + 1) * 10**9),
            "attributes": [{"key": k, "value": value(v)} for k, v in attrs.items()]}


def test_model_spans_without_a_cost_are_priced_from_the_price_table_and_unknown_ones_stay_unpriced(
        tmp_path, monkeypatch) -> None:
    from decimal import Decimal

    prices = tmp_path / "prices.json"
    prices.write_text('{"house-model": {"input_per_m": "2", "output_per_m": "4"}}')
    monkeypatch.setenv("TACHO_PRICES", str(prices))
    a = make_api(tmp_path)
    t = 1_780_000_000  # 2026-05-28, UTC

    def chat(span_id: str, start: int, model: str, provider: str, **more: object) -> dict[str, object]:
        return _json_span(span_id, start, {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                                           "gen_ai.provider.name": provider,
                                           "gen_ai.usage.input_tokens": 1000,
                                           "gen_ai.usage.output_tokens": 500, **more},
                          parent="00f067aa0ba902b7")

    spans = [
        _json_span("00f067aa0ba902b7", t, {"gen_ai.operation.name": "invoke_agent"}),
        chat("0000000000000001", t + 1, "gpt-4o-mini", "openai"),
        chat("0000000000000002", t + 2, "gpt-4o-mini", "openai", **{"gen_ai.usage.cost": "0.5"}),
        chat("0000000000000003", t + 3, "smollm2-135m-instruct", "ollama"),
        chat("0000000000000004", t + 4, "house-model", "ollama"),
    ]
    spans[0]["endTimeUnixNano"] = str((t + 10) * 10**9)
    body = {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": spans}]}]}
    try:
        r = a.client.post("/v1/traces", content=orjson.dumps(body),
                          headers={**a.auth("publisher"), "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        events = [loads(row.data)["event"] for row in
                  a.ledger.store.run_entries("acme", "5b8efff798038103d269b633813fc60c")]
        calls = [e["data"] for e in events if e["type"] == "model.called"]
        costs = [Decimal(str(c["cost_usd"])) for c in calls]
        # gpt-4o-mini: $0.15 / $0.60 per million tokens (genai-prices); the span's own cost wins
        assert costs == [Decimal("0.00045"), Decimal("0.5"), Decimal(0), Decimal("0.004")]
        assert [c.get("priced") for c in calls] == [None, None, False, None]
    finally:
        close_api(a)
