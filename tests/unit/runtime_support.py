"""Helpers for the agent runtime's tests: a model adapter with fixed usage, agents built from
plain functions, runtimes over a real ledger (the embedded transport), and a person in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from domain.approvals import record_decision
from domain.ledger import Ledger, iso
from ingest.embedded import embedded_runtime
from tachograph.agents import AgentSpec
from tachograph.contract.canonical import loads
from tachograph.models import ChatRequest, ChatResponse, ModelRegistry, Price, PriceTable
from tachograph.runtime import Runtime
from tachograph.tools import ToolRegistry
from tests.factories import FakeClock

START = 1_772_355_600.0  # 2026-03-01T09:00:00Z
MODEL = "fixed-v1"
PRICE = Price(Decimal("10"), Decimal("0"))  # 0.01 USD per 1,000 input tokens


@dataclass
class FixedModel:
    """A model adapter that answers ``content`` with fixed usage and counts its calls."""

    input_tokens: int = 1000
    output_tokens: int = 0
    content: str = "ok"
    name: str = MODEL
    provider: str = "local"
    calls: list[ChatRequest] = field(default_factory=list)

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer with the fixed usage."""
        self.calls.append(request)
        return ChatResponse(self.content, self.input_tokens, self.output_tokens, Decimal(100))


def models(model: FixedModel | None = None) -> ModelRegistry:
    """The simulated models plus ``model`` (default: a fresh FixedModel), priced."""
    registry = ModelRegistry(prices=PriceTable({MODEL: PRICE}))
    registry.register(model or FixedModel())
    return registry


def agent(fn: Callable[..., Any], tools: ToolRegistry | None = None, workflow: str = "refunds",
          identity: Mapping[str, str] | None = None) -> AgentSpec:
    """An agent from a plain function (its entry point named after the function, ``agent`` for a lambda)."""
    name = fn.__name__ if fn.__name__.isidentifier() else "agent"
    return AgentSpec(ref=f"tests.unit.runtime_support:{name}", fn=fn, tools=tools or ToolRegistry(),
                     prompts={}, workflow=workflow, identity=dict(identity or {"id": "refund-agent", "version": "1.2.0"}))


class SeqRunIds:
    """Run ids ``run-1``, ``run-2``, ..."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"run-{self.n}"


def runtime(ledger: Ledger, workspace: str = "acme", *, clock: FakeClock | None = None,
            model: FixedModel | None = None, **kw: Any) -> Runtime:
    """A runtime recording into ``ledger`` (halts and approvals from it), on a fake clock."""
    clock = clock or FakeClock(START)
    kw.setdefault("run_ids", SeqRunIds())
    kw.setdefault("trace_ids", lambda: "0af7651916cd43dd8448eb211c80319c")
    kw.setdefault("sleep", lambda s: time.sleep(min(s, 0.01)))
    kw.setdefault("monotonic", clock)
    return embedded_runtime(ledger, workspace, models=models(model), model=MODEL, clock=clock, **kw)


def events(ledger: Ledger, run_id: str, workspace: str = "acme") -> list[dict[str, Any]]:
    """A run's stored events."""
    return [loads(r.data)["event"] for r in ledger.store.run_entries(workspace, run_id)]


class PersonThread:
    """A person deciding the first pending approval of a workspace through ``record_decision``
    (the platform's one path for a decision), from another thread, as the console would."""

    def __init__(self, ledger: Ledger, decision: str, by: str = "Pat Approver (apikey:0f2ce1b41813)",
                 workspace: str = "acme", reason: str | None = None) -> None:
        self.ledger = ledger
        self.decision = decision
        self.by = by
        self.workspace = workspace
        self.reason = reason
        self.decided: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PersonThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(10)
        if self.error is not None:
            raise self.error

    def _watch(self) -> None:
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                now = time.time()
                pending = self.ledger.store.approval_page(self.workspace, decided=False, now=now, after=-1, limit=1)
                if pending:
                    row = pending[0]
                    record_decision(self.ledger, self.workspace, row.approval_id, self.decision, self.by,
                                    {"key_id": "0f2ce1b41813", "role": "approver", "name": "Pat Approver"},
                                    self.reason, iso(now), now, row.run_id)
                    self.decided = row.approval_id
                    return
                time.sleep(0.01)
        except BaseException as e:  # raised in the test's thread on exit
            self.error = e
