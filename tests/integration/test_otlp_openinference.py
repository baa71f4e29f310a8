"""An app instrumented as many are today — the OpenAI SDK with openinference-instrumentation-openai,
exporting OTLP/HTTP to the platform under uvicorn, calling an OpenAI-compatible server — yields
``model.called`` events that keep the request messages, params and response, with tokens and a
cost from the price table (or ``priced: false``); and those runs step-replay on a candidate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from replay.history import load_runs
from replay.report import Gate
from replay.steps import StepConfig, run_step_replay
from tachograph.contract.canonical import loads
from tachograph.models import HttpModelConfig, ModelRegistry
from tachograph.prices import PriceTable
from tests.chat_stub import ChatStub, answer, chat_stub
from tests.harness import free_port
from tests.integration.api_support import Api, make_api, serving

TOOLS = [{"type": "function", "function": {
    "name": "crm_lookup", "description": "the customer's tier",
    "parameters": {"type": "object", "properties": {"tier": {"type": "string"}}}}}]


@pytest.fixture
def platform(tmp_path) -> Iterator[tuple[Api, str]]:
    a = make_api(tmp_path)
    with serving(a.app, free_port()) as url:
        yield a, url
    a.ledger.store.close()


@pytest.fixture
def stub() -> Iterator[ChatStub]:
    with chat_stub() as s:
        yield s


@pytest.fixture
def instrumented(platform) -> Iterator[TracerProvider]:
    """The OpenAI SDK instrumented by OpenInference, its spans exported to the platform."""
    a, url = platform
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot",
                                                        "service.version": "1.4.0"}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=a.auth("publisher"))))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    try:
        yield provider
    finally:
        OpenAIInstrumentor().uninstrument()
        provider.shutdown()


def _app(provider: TracerProvider, stub: ChatStub, text: str) -> str:
    """One support conversation: an agent span around a classification and a tool choice."""
    client = openai.OpenAI(base_url=stub.base_url, api_key="not-used-by-the-stub")
    tracer = provider.get_tracer("support-bot")
    with tracer.start_as_current_span("support-bot") as root:
        root.set_attribute("openinference.span.kind", "AGENT")
        client.chat.completions.create(
            model="gpt-4o-mini", temperature=0.2, max_tokens=20,
            messages=[{"role": "system", "content": "Answer with the category only."},
                      {"role": "user", "content": text}])
        client.chat.completions.create(
            model="gpt-4o-mini", tools=TOOLS,
            messages=[{"role": "user", "content": f"Look up the customer of: {text}"}])
        return format(root.get_span_context().trace_id, "032x")


def _events(a: Api, run: str) -> list[dict[str, Any]]:
    return [loads(r.data)["event"] for r in a.ledger.store.run_entries("acme", run)]


def _wait_for(a: Api, run: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(events := _events(a, run)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return events


def test_openinference_spans_keep_messages_params_response_tokens_and_cost(platform, stub, instrumented):
    a, _ = platform
    run = _app(instrumented, stub, "I want my money back for order 12")
    events = _wait_for(a, run, 4)
    assert [e["type"] for e in events] == ["run.started", "model.called", "model.called", "run.completed"]
    first, second = events[1]["data"], events[2]["data"]

    assert first["request"] == {
        "messages": [{"role": "system", "content": "Answer with the category only."},
                     {"role": "user", "content": "I want my money back for order 12"}],
        "params": {"temperature": Decimal("0.2"), "max_tokens": 20},
    }
    assert first["response"] == {"content": "refund", "finish_reason": "stop"}
    usage = answer(stub.requests[0])["usage"]  # what the server reported
    tin, tout = usage["prompt_tokens"], usage["completion_tokens"]
    assert (first["input_tokens"], first["output_tokens"]) == (tin, tout)
    priced = PriceTable().cost_or_none("gpt-4o-mini", tin, tout, "openai")
    assert priced is not None and priced > 0, "gpt-4o-mini is in genai-prices' catalogue"
    assert Decimal(str(first["cost_usd"])) == priced and "priced" not in first

    assert second["request"]["params"] == {"tools": TOOLS}
    assert second["response"]["finish_reason"] == "tool_calls"
    [call] = second["response"]["tool_calls"]
    assert call["function"] == {"name": "crm_lookup", "arguments": '{"tier": "gold"}'}


def test_an_unknown_model_is_recorded_unpriced_not_free(platform, stub, instrumented):
    a, _ = platform
    client = openai.OpenAI(base_url=stub.base_url, api_key="x")
    client.chat.completions.create(model="SmolLM2-135M-Instruct",
                                   messages=[{"role": "user", "content": "hello"}])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        runs = load_runs(a.ledger.store, workflow="support-bot", finished_only=False)
        if runs and len(runs[0].events) == 2:
            break
        time.sleep(0.05)
    [run] = runs  # no agent span: a run of its own, never completed
    d = run.events[1]["data"]
    assert d["model"] == "SmolLM2-135M-Instruct" and d["priced"] is False and Decimal(str(d["cost_usd"])) == 0
    assert d["request"]["messages"] == [{"role": "user", "content": "hello"}]
    assert d["response"]["content"] == "billing" and d["input_tokens"] > 0


def test_otlp_runs_step_replay_on_a_candidate_over_http(platform, stub, instrumented):
    a, _ = platform
    for text in ("I want my money back", "The app crashes on start", "Please change my plan"):
        run = _app(instrumented, stub, text)
        _wait_for(a, run, 4)
    runs = load_runs(a.ledger.store, workflow="support-bot")
    assert len(runs) == 3 and all(r.entry_point is None for r in runs)  # no agent code is known
    prices = PriceTable({**PriceTable().prices, "candidate-other": PriceTable().price("sim-large-v2")})
    models = ModelRegistry({"candidate-other": HttpModelConfig(stub.base_url, "candidate-other")},
                           sleep=time.sleep, clock=time.monotonic, prices=prices)
    sent = len(stub.requests)

    report = run_step_replay(runs, StepConfig("steps-otlp", "2026-11-20T10:00:00Z", "candidate-other",
                                              Gate(max_response_change=Decimal("0.5"))), models)

    assert len(stub.requests) == sent + 6  # every recorded request sent again, over HTTP
    s = report["summary"]
    assert (s["model_calls"], s["replayed_calls"], s["unreplayable_calls"]) == (6, 6, 0)
    # the money question still gets "refund"; the two others change word; every tool call changes args
    assert s["responses_changed"] == 5 and s["tool_calls_changed"] == 3 and s["tool_choices_changed"] == 0
    assert s["response_change_rate"] == Decimal("0.833333")
    assert not report["gate"]["passed"] and "response change rate" in report["gate"]["failures"][0]
    assert s["before"]["cost_usd"] is not None and s["after"]["cost_usd"] is not None
    call = report["runs"][0]["calls"][1]
    assert call["tool_args_changed"] is True and call["after"]["tool_calls"][0]["function"]["arguments"] \
        == '{"tier": "silver"}'
