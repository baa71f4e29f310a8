"""W3C trace ids for runs: the caller's current OpenTelemetry trace when there is one.

A run's ``trace_id`` ties its events to the service's own logs and traces. When the agent
service has OpenTelemetry (``opentelemetry-api``) and a span is active, the run joins that
trace; otherwise the run starts a trace id of its own. OpenTelemetry is optional: without it
installed, this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import secrets


def current_trace_id() -> str:
    """The active OpenTelemetry span's trace id (32 lowercase hex digits), else a new random one."""
    try:
        from opentelemetry import trace
    except ImportError:
        return secrets.token_hex(16)
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid and ctx.trace_id:
        return format(ctx.trace_id, "032x")
    return secrets.token_hex(16)
