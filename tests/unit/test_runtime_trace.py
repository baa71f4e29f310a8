"""W3C trace ids on runs: a run joins the caller's current OpenTelemetry trace when a span is
active (the SDK's own spans and a context propagated from an incoming request alike); otherwise
it gets a random valid trace id of its own, never the all-zeros invalid one."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tachograph import Context, Runtime
from tachograph.contract.canonical import loads
from tachograph.trace import current_trace_id
from tachograph.transports import CollectingTransport

W3C_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
INVALID = "0" * 32
WORKFLOW = "trace-check"
AGENT = {"id": "trace-agent", "version": "1.0.0"}


def two_steps(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """An agent with a model call, so a run has more events than start and end."""
    reply = ctx.llm("Say hello to " + input["name"])
    return {"greeting": reply.content}


def _run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One run on an in-memory transport: (the run's events, the events that left the process)."""
    transport = CollectingTransport()
    with Runtime(workspace="acme", transport=transport) as rt:
        result = rt.run(two_steps, {"name": "Ada"})
    assert result.outcome == "succeeded", result.error
    return result.events, [loads(v) for v in transport.values()]


def _trace_ids(events: list[dict[str, Any]]) -> set[str]:
    assert len(events) >= 3, events
    return {e.get("trace_id", "<missing>") for e in events}


def test_a_run_inside_an_active_sdk_span_carries_that_spans_trace_id_on_every_event() -> None:
    tracer = TracerProvider().get_tracer("tests.unit.test_runtime_trace")
    with tracer.start_as_current_span("handle-ticket") as span:
        expected = format(span.get_span_context().trace_id, "032x")
        events, sent = _run()
    assert W3C_TRACE_ID.match(expected) and expected != INVALID
    assert _trace_ids(events) == {expected}
    assert _trace_ids(sent) == {expected}  # what the platform receives, not just the local copy


def test_a_trace_propagated_from_an_incoming_request_is_joined() -> None:
    remote = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    with trace.use_span(NonRecordingSpan(remote)):
        events, _ = _run()
    assert _trace_ids(events) == {"4bf92f3577b34da6a3ce929d0e0e4736"}


def test_without_an_active_span_each_run_gets_a_random_valid_trace_id_of_its_own() -> None:
    assert not trace.get_current_span().get_span_context().is_valid
    first, second = _run()[0], _run()[0]
    (a,), (b,) = _trace_ids(first), _trace_ids(second)
    assert W3C_TRACE_ID.match(a) and W3C_TRACE_ID.match(b)
    assert a != b and INVALID not in (a, b)


def test_an_invalid_active_span_is_not_joined_so_no_run_carries_the_all_zeros_trace_id() -> None:
    with trace.use_span(trace.INVALID_SPAN):
        ids = {current_trace_id() for _ in range(50)}
        events, _ = _run()
    assert len(ids) == 50 and all(W3C_TRACE_ID.match(i) for i in ids) and INVALID not in ids
    (only,) = _trace_ids(events)
    assert W3C_TRACE_ID.match(only) and only != INVALID


def test_without_opentelemetry_installed_runs_still_get_a_valid_trace_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # `import opentelemetry` now fails
    with pytest.raises(ImportError):
        import opentelemetry  # noqa: F401
    tracer = TracerProvider().get_tracer("tests.unit.test_runtime_trace")
    with tracer.start_as_current_span("not-visible-without-the-api") as span:
        (only,) = _trace_ids(_run()[0])
    assert W3C_TRACE_ID.match(only) and only != INVALID
    assert only != format(span.get_span_context().trace_id, "032x")
