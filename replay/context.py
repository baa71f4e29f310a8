"""The agent runtime: the context agent code calls for every model, tool, policy and change.

Agent code is ``def agent(ctx, input) -> dict``. The same code runs against a
:class:`LiveContext` (real adapters and tools, every step recorded as contract events) and a
replay context (answers from the recording, see :mod:`replay.replaying`). Nothing here reads the
clock, random numbers or UUIDs: time and ids come from the context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from domain.canonical import dumps, loads
from domain.errors import RunRuleError
from domain.ledger import iso
from domain.run import RunState
from replay.errors import (
    BudgetExceeded,
    ModelError,
    PricingError,
    PromptError,
    ReplayError,
    ToolFailed,
    UnknownModelError,
)
from replay.models import ChatRequest, ModelRegistry, PriceTable
from replay.recorder import RunSpec, make_event
from replay.tools import ToolRegistry

OUTCOMES = ("succeeded", "failed", "escalated", "cancelled")
Agent = Callable[["Context", dict[str, Any]], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Reply:
    """A model's answer as agent code sees it."""

    content: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    finish_reason: str | None = None
    tool_calls: list[Any] | None = None


@dataclass(frozen=True)
class ApprovalDecision:
    """A person's decision on an approval request."""

    decision: str  # approved | rejected
    by: str
    reason: str | None = None


@dataclass(frozen=True)
class ModelAnswer:
    """What a context's model source returned for one call (already priced)."""

    model: str
    provider: str
    content: Any
    input_tokens: int
    output_tokens: int
    cost_usd: Any
    latency_ms: Any
    finish_reason: str | None = None
    tool_calls: list[Any] | None = None


@dataclass(frozen=True)
class ToolAnswer:
    """What a context's tool source returned for one call."""

    status: str
    result: Any
    error: str | None
    latency_ms: Any
    side_effect: str


class RunStop(ReplayError):
    """Ends a run early with an outcome (raised by the runtime, never by agent code)."""

    def __init__(self, outcome: str, error: str, result: Mapping[str, Any] | None = None) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error
        self.result = result


def parse_time(text: str) -> datetime:
    """An RFC 3339 event time as an aware datetime."""
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))


def format_time(when: datetime) -> str:
    """An aware datetime as RFC 3339 UTC text (microseconds)."""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def money_text(value: Decimal) -> str:
    """Exact money as a decimal string (never scientific notation)."""
    return format(value, "f")


def _normalise(value: Any) -> Any:
    return loads(dumps(value))


class Context:
    """What agent code calls; records every step as a contract event of the run."""

    def __init__(
        self,
        spec: RunSpec,
        *,
        tools: ToolRegistry,
        prompts: Mapping[str, str],
        model: str,
        prices: PriceTable,
    ) -> None:
        self.spec = spec
        self.tools = tools
        self.prompts = dict(prompts)
        self.model = model
        self.prices = prices
        self.events: list[dict[str, Any]] = []
        self._state = RunState(spec.workspace, spec.run_id)
        self._ids = 0
        self.model_calls = 0
        self.tokens = 0
        self.cost = Decimal(0)
        self.finished = False

    # --- what agent code calls -----------------------------------------------------------
    def now(self) -> datetime:
        """The run's current time: the time of its latest event (deterministic in replay)."""
        return parse_time(self.events[-1]["time"])

    def new_id(self, prefix: str = "id") -> str:
        """A new id unique within the run, the same on every replay."""
        self._ids += 1
        return f"{prefix}-{self._ids}"

    def prompt(self, name: str) -> str:
        """The text of a named prompt (a what-if replay may substitute it)."""
        try:
            return self.prompts[name]
        except KeyError:
            raise PromptError(
                f"prompt {name!r} is not registered; registered: {', '.join(sorted(self.prompts)) or 'none'}"
            ) from None

    def llm(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        params: Mapping[str, Any] | None = None,
    ) -> Reply:
        """Call the run's model; budget caps are enforced around the call."""
        budget = self.spec.budget or {}
        cap = budget.get("max_model_calls")
        if cap is not None and self.model_calls + 1 > int(cap):
            raise BudgetExceeded("model_calls", int(cap), self.model_calls + 1)
        if isinstance(messages, str):
            msgs: list[dict[str, Any]] = [{"role": "user", "content": messages}]
        else:
            msgs = [dict(m) for m in messages]
        request: dict[str, Any] = {"messages": msgs}
        if params:
            request["params"] = dict(params)
        request = _normalise(request)
        call_id = self.new_id("m")
        answer = self._answer_model(call_id, request)
        response: dict[str, Any] = {"content": answer.content}
        if answer.finish_reason is not None:
            response["finish_reason"] = answer.finish_reason
        if answer.tool_calls:
            response["tool_calls"] = answer.tool_calls
        self._emit(
            "model.called",
            {
                "call_id": call_id,
                "provider": answer.provider,
                "model": answer.model,
                "input_tokens": answer.input_tokens,
                "output_tokens": answer.output_tokens,
                "cost_usd": answer.cost_usd,
                "latency_ms": answer.latency_ms,
                "request": request,
                "response": response,
            },
            answer.latency_ms,
        )
        cost = Decimal(str(answer.cost_usd))
        self.model_calls += 1
        self.tokens += answer.input_tokens + answer.output_tokens
        self.cost += cost
        if budget.get("max_tokens") is not None and self.tokens > int(budget["max_tokens"]):
            raise BudgetExceeded("tokens", int(budget["max_tokens"]), self.tokens)
        if budget.get("max_cost_usd") is not None and self.cost > Decimal(str(budget["max_cost_usd"])):
            raise BudgetExceeded("cost_usd", Decimal(str(budget["max_cost_usd"])), self.cost)
        return Reply(
            content=str(answer.content) if answer.content is not None else "",
            model=answer.model,
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            cost_usd=cost,
            finish_reason=answer.finish_reason,
            tool_calls=answer.tool_calls,
        )

    def tool(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """Call a registered tool; an error result raises :class:`ToolFailed`."""
        tool = self.tools.get(name)
        call_args = _normalise(dict(args or {}))
        call_id = self.new_id("t")
        answer = self._answer_tool(call_id, name, call_args)
        data: dict[str, Any] = {
            "call_id": call_id,
            "tool": name,
            "args": call_args,
            "status": answer.status,
            "latency_ms": answer.latency_ms,
            "side_effect": answer.side_effect or tool.side_effect,
        }
        if answer.status == "ok":
            data["result"] = answer.result
        else:
            data["error"] = answer.error or "error"
        self._emit("tool.called", data, answer.latency_ms)
        if answer.status != "ok":
            raise ToolFailed(name, answer.error or "error")
        return answer.result

    def policy(
        self,
        policy: str,
        action: str,
        decision: str,
        reason: str,
        risk_score: Decimal | None = None,
    ) -> str:
        """Record a policy decision (allow, deny or require_approval) and return it."""
        data: dict[str, Any] = {"policy": policy, "action": action, "decision": decision, "reason": reason}
        if risk_score is not None:
            data["risk_score"] = risk_score
        self._emit("policy.evaluated", data)
        return decision

    def request_approval(self, summary: str, risk: str = "medium", change_id: str | None = None) -> bool:
        """Ask a person; True when approved. No decision available ends the run escalated."""
        approval_id = self.new_id("approval")
        data: dict[str, Any] = {"approval_id": approval_id, "summary": summary, "risk": risk}
        if change_id is not None:
            data["change_id"] = change_id
        self._emit("approval.requested", data)
        decided = self._answer_approval(approval_id, summary, risk, change_id)
        if decided is None:
            raise RunStop(
                "escalated",
                f"waiting for approval {approval_id}: {summary}",
                {"pending_approval": approval_id},
            )
        out: dict[str, Any] = {"approval_id": approval_id, "decision": decided.decision, "by": decided.by}
        if decided.reason is not None:
            out["reason"] = decided.reason
        self._emit("approval.decided", out)
        return decided.decision == "approved"

    def propose_change(
        self, target: str, before: Mapping[str, Any], after: Mapping[str, Any], reversible: bool = True
    ) -> str:
        """Record a proposed change; returns its change id."""
        change_id = self.new_id("change")
        self._emit(
            "change.proposed",
            {"change_id": change_id, "target": target, "before": dict(before),
             "after": dict(after), "reversible": reversible},
        )
        return change_id

    def apply_change(self, change_id: str) -> None:
        """Record that a proposed (and, where required, approved) change was applied."""
        self._emit("change.applied", {"change_id": change_id})

    # --- runtime ---------------------------------------------------------------------------
    def start(self) -> None:
        """Record ``run.started``."""
        self._emit("run.started", self.spec.started_data())

    def finish(self, outcome: str, result: Mapping[str, Any] | None, error: str | None) -> None:
        """Record ``run.completed``."""
        data: dict[str, Any] = {"outcome": outcome}
        if result is not None:
            data["result"] = dict(result)
        if error is not None:
            data["error"] = error
        self.finished = True
        self._emit("run.completed", data)

    def _emit(self, etype: str, data: dict[str, Any], advance_ms: Any = 0) -> dict[str, Any]:
        seq = len(self.events)
        event = make_event(self.spec, seq, etype, _normalise(data), self._stamp(seq, etype, advance_ms))
        try:
            self._state.check(event)
        except RunRuleError as e:
            raise ReplayError(f"agent broke a run rule at seq {seq}: {e}") from e
        self._state.apply(event, "")
        self.events.append(event)
        self._after_emit(event)
        return event

    # --- what live and replay contexts differ in ----------------------------------------------
    def _stamp(self, seq: int, etype: str, advance_ms: Any) -> str:
        raise NotImplementedError

    def _after_emit(self, event: dict[str, Any]) -> None:
        """Hook: replay contexts compare each event with the recording here."""

    def _answer_model(self, call_id: str, request: dict[str, Any]) -> ModelAnswer:
        raise NotImplementedError

    def _answer_tool(self, call_id: str, name: str, args: dict[str, Any]) -> ToolAnswer:
        raise NotImplementedError

    def _answer_approval(
        self, approval_id: str, summary: str, risk: str, change_id: str | None
    ) -> ApprovalDecision | None:
        raise NotImplementedError


Approver = Callable[[str, str, "str | None"], "ApprovalDecision | None"]


class LiveContext(Context):
    """Calls the real model adapter and tool functions; time from the injected clock."""

    def __init__(
        self,
        spec: RunSpec,
        *,
        tools: ToolRegistry,
        prompts: Mapping[str, str],
        model: str,
        models: ModelRegistry,
        clock: Callable[[], float],
        approver: Approver | None = None,
    ) -> None:
        super().__init__(spec, tools=tools, prompts=prompts, model=model, prices=models.prices)
        self.models = models
        self.clock = clock
        self.approver = approver

    def _stamp(self, seq: int, etype: str, advance_ms: Any) -> str:
        return iso(self.clock())

    def _answer_model(self, call_id: str, request: dict[str, Any]) -> ModelAnswer:
        adapter = self.models.get(self.model)
        chat = ChatRequest(self.model, tuple(request["messages"]), request.get("params") or {})
        r = adapter.complete(chat)
        cost = self.prices.cost(self.model, r.input_tokens, r.output_tokens)
        return ModelAnswer(
            adapter.name, adapter.provider, r.content, r.input_tokens, r.output_tokens,
            money_text(cost), r.latency_ms, r.finish_reason, r.tool_calls,
        )

    def _answer_tool(self, call_id: str, name: str, args: dict[str, Any]) -> ToolAnswer:
        tool = self.tools.get(name)
        started = self.clock()
        try:
            result = tool.fn(args)
        except ToolFailed as e:
            return ToolAnswer("error", None, e.error, _ms(self.clock() - started), tool.side_effect)
        except Exception as e:  # a live tool's own failure is recorded, not hidden
            return ToolAnswer(
                "error", None, f"{type(e).__name__}: {e}", _ms(self.clock() - started), tool.side_effect
            )
        return ToolAnswer("ok", _normalise(result), None, _ms(self.clock() - started), tool.side_effect)

    def _answer_approval(
        self, approval_id: str, summary: str, risk: str, change_id: str | None
    ) -> ApprovalDecision | None:
        if self.approver is None:
            return None
        return self.approver(summary, risk, change_id)


def _ms(seconds: float) -> Decimal:
    return Decimal(str(round(max(seconds, 0.0) * 1000, 3)))


def advance(text: str, ms: Any) -> str:
    """An event time ``ms`` milliseconds after ``text``."""
    return format_time(parse_time(text) + timedelta(milliseconds=float(Decimal(str(ms or 0)))))


def run_agent(agent: Agent, ctx: Context) -> list[dict[str, Any]]:
    """Run agent code over a context from ``run.started`` to ``run.completed``; return the events.

    Agent code returns its result object; a ``"outcome"`` key in it (succeeded, failed,
    escalated, cancelled) sets the outcome, default succeeded. A budget breach ends the run
    cancelled, an unhandled tool failure or agent error ends it failed.
    """
    try:
        ctx.start()
        try:
            result = agent(ctx, dict(ctx.spec.input or {}))
        except BudgetExceeded as e:
            ctx._emit(
                "budget.exceeded", {"limit": e.limit, "limit_value": e.limit_value, "observed": e.observed}
            )
            raise RunStop("cancelled", str(e)) from e
        except ToolFailed as e:
            raise RunStop("failed", str(e)) from e
        except (RunStop, ModelError, UnknownModelError, PricingError):
            raise
        except Exception as e:  # agent code bugs end the run failed, with the error recorded
            raise RunStop("failed", f"{type(e).__name__}: {e}") from e
    except RunStop as e:
        if not ctx.finished:
            ctx.finish(e.outcome, e.result, e.error)
        return ctx.events
    out = dict(result or {})
    outcome = out.get("outcome", "succeeded")
    if outcome not in OUTCOMES:
        ctx.finish("failed", None, f"agent returned unknown outcome {outcome!r}")
    else:
        ctx.finish(outcome, out, None)
    return ctx.events
