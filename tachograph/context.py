"""The run context: what agent code calls for every model, tool, policy, approval and change.

Agent code is ``def agent(ctx, input) -> dict``. The same function runs live (``tachograph.live``:
real models and tools, every step sent to the platform as it happens) and in replay
(``replay.replaying``: answers from a recording or a candidate). Everything the two differ in is a
hook of :class:`Context`; the events are built by one :class:`~tachograph.builder.RunLog`.

Before every step the context checks the kill switches (live) and the budget, deadline included;
crossing a cap records ``budget.exceeded`` and ends the run ``cancelled``, a halt ends it
``cancelled`` with the halt recorded. Nothing here reads the clock or makes random ids: time and
ids come from the hooks, so a replay is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from tachograph.builder import RunLog, RunSpec, parse_time, rfc3339, seq_event_id
from tachograph.contract.canonical import dumps, loads
from tachograph.errors import (
    AgentError,
    BudgetExceeded,
    ModelError,
    PolicyDenied,
    PricingError,
    PromptError,
    ToolFailed,
    UnknownModelError,
)
from tachograph.halts import Halt
from tachograph.policy import policy_input
from tachograph.prices import PriceTable
from tachograph.tools import ToolRegistry

OUTCOMES = ("succeeded", "failed", "escalated", "cancelled")
DEFAULT_APPROVAL_TIMEOUT_S = 900.0
"""How long ``ctx.request_approval`` waits when no ``timeout`` is given (15 minutes)."""
Agent = Callable[["Context", dict[str, Any]], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Reply:
    """A model's answer as agent code sees it (``cost_usd`` None: no price known)."""

    content: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None
    finish_reason: str | None = None
    tool_calls: list[Any] | None = None


@dataclass(frozen=True)
class ApprovalDecision:
    """A person's decision on an approval request."""

    decision: str  # approved | rejected
    by: str
    reason: str | None = None
    replayed_from: str | None = None  # replays: the recorded approval this decision repeats


@dataclass(frozen=True)
class Evaluation:
    """A policy engine's decision on one action, as ``policy.evaluated`` records it."""

    policy: str
    decision: str  # allow | deny | require_approval
    reason: str
    revision: str | None = None
    decision_id: str | None = None
    with_arguments: bool = True
    """Record the action's arguments when the decision is not allow (replays: as recorded)."""


@dataclass(frozen=True)
class ModelAnswer:
    """What a context's model source returned for one call (``cost_usd`` None: unpriced)."""

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


class RunStop(BaseException):
    """Ends a run early with an outcome (raised by the runtime, never by agent code).

    A BaseException, so agent code's ``except Exception`` cannot swallow a halt or a budget stop;
    once raised, every later step of the run raises it again.
    """

    def __init__(self, outcome: str, error: str, result: Mapping[str, Any] | None = None) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error
        self.result = result


def format_time(when: Any) -> str:
    """An aware datetime or unix time as RFC 3339 UTC text (microseconds)."""
    return rfc3339(when)


def _risk(tier: str) -> str:
    return tier if tier in ("low", "medium", "high") else "medium"


def money_text(value: Decimal) -> str:
    """Exact money as a decimal string (never scientific notation)."""
    return format(value, "f")


def advance(text: str, ms: Any) -> str:
    """An event time ``ms`` milliseconds after ``text``."""
    return rfc3339(parse_time(text) + timedelta(milliseconds=float(Decimal(str(ms or 0)))))


def normalise(value: Any) -> Any:
    """A JSON value as the ledger will hold it (Decimal numbers, canonical types)."""
    return loads(dumps(value))


def _dec(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


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
        event_ids: Callable[[str, int], str] = seq_event_id,
    ) -> None:
        self.spec = spec
        self.tools = tools
        self.prompts = dict(prompts)
        self.model = model
        self.prices = prices
        self.log = RunLog(spec, event_ids=event_ids)
        self._ids = 0
        self.model_calls = 0
        self.tokens = 0
        self.cost = Decimal(0)
        self.unpriced_calls = 0
        self.finished = False
        self._stop: RunStop | None = None
        self._proposed: dict[str, dict[str, Any]] = {}

    @property
    def events(self) -> list[dict[str, Any]]:
        """The run's events so far."""
        return self.log.events

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.spec.run_id

    @property
    def budget(self) -> Mapping[str, Any]:
        """The run's caps as recorded in ``run.started`` (empty: none)."""
        return self.spec.budget or {}

    # --- what agent code calls -----------------------------------------------------------
    def now(self) -> Any:
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
        """Call the run's model; halts and budget caps are checked before, tokens and cost after."""
        self._guard(next_model_call=True)
        if isinstance(messages, str):
            msgs: list[dict[str, Any]] = [{"role": "user", "content": messages}]
        else:
            msgs = [dict(m) for m in messages]
        request: dict[str, Any] = {"messages": msgs}
        if params:
            request["params"] = dict(params)
        request = normalise(request)
        call_id = self.new_id("m")
        answer = self._answer_model(call_id, request)
        response: dict[str, Any] = {"content": answer.content}
        if answer.finish_reason is not None:
            response["finish_reason"] = answer.finish_reason
        if answer.tool_calls:
            response["tool_calls"] = answer.tool_calls
        data: dict[str, Any] = {
            "call_id": call_id,
            "provider": answer.provider,
            "model": answer.model,
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
            "cost_usd": "0" if answer.cost_usd is None else answer.cost_usd,
            "latency_ms": answer.latency_ms,
            "request": request,
            "response": response,
        }
        if answer.cost_usd is None:
            data["priced"] = False
        self._emit("model.called", data, answer.latency_ms)
        cost = None if answer.cost_usd is None else _dec(answer.cost_usd)
        self.model_calls += 1
        self.tokens += answer.input_tokens + answer.output_tokens
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost += cost
        self._check_usage()
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
        """Call a registered tool; an error result raises :class:`ToolFailed` (catchable)."""
        tool = self.tools.get(name)
        self._guard(side_effect=tool.side_effect)
        call_args = normalise(dict(args or {}))
        self._enforce("tool", name, call_args, tool.side_effect)
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
        self._guard()
        data: dict[str, Any] = {"policy": policy, "action": action, "decision": decision, "reason": reason}
        if risk_score is not None:
            data["risk_score"] = risk_score
        self._emit("policy.evaluated", data)
        return decision

    def request_approval(
        self,
        summary: str,
        risk: str = "medium",
        change: str | None = None,
        *,
        timeout: float | None = None,
        change_id: str | None = None,
    ) -> bool:
        """Ask a person and wait; True when approved.

        Records ``approval.requested`` (with ``timeout_s``), sends everything recorded so far, and
        blocks until a person decides through the platform or ``timeout`` seconds pass (then the
        approval is ``expired`` and this returns False: the run takes its not-approved path).
        Without ``timeout``, the runtime's default (15 minutes); the timeout is always recorded,
        so the platform stops offering the approval to people when the agent stops waiting.
        ``change``: the change id the approval gates. The approval id is unique in the workspace
        (``<run_id>/approval-<n>``).
        """
        self._guard()
        change = change if change is not None else change_id
        approval_id = f"{self.spec.run_id}/{self.new_id('approval')}"
        data: dict[str, Any] = {"approval_id": approval_id, "summary": summary, "risk": risk}
        if change is not None:
            data["change_id"] = change
        wait_s = _dec(timeout if timeout is not None else self._default_approval_timeout())
        data["timeout_s"] = wait_s  # the platform expires it when the agent stops waiting
        self._emit("approval.requested", data)
        decided = self._answer_approval(approval_id, summary, risk, change, float(wait_s))
        if decided is None:
            return False
        out: dict[str, Any] = {"approval_id": approval_id, "decision": decided.decision, "by": decided.by}
        if decided.reason is not None:
            out["reason"] = decided.reason
        if decided.replayed_from is not None:
            out["replayed_from"] = decided.replayed_from
        self._emit("approval.decided", out)
        return decided.decision == "approved"

    def propose_change(
        self, target: str, before: Mapping[str, Any], after: Mapping[str, Any], reversible: bool = True
    ) -> str:
        """Record a proposed change; returns its change id."""
        self._guard()
        change_id = self.new_id("change")
        event = self._emit(
            "change.proposed",
            {"change_id": change_id, "target": target, "before": dict(before),
             "after": dict(after), "reversible": reversible},
        )
        self._proposed[change_id] = event["data"]
        return change_id

    def apply_change(self, change_id: str, fn: Callable[[], Any] | None = None) -> Any:
        """Apply a proposed change: the run rules are checked first (a change that needs an
        approval it does not have raises RunRuleError and ``fn`` never runs), then ``fn`` (the
        side effect, skipped in dry-run mode and in replay), then ``change.applied`` is recorded."""
        self._guard(side_effect="write")
        proposed = self._proposed.get(change_id)
        if proposed is not None:
            self._enforce("change", proposed["target"], proposed, "write", change_id)
        self.log.check("change.applied", {"change_id": change_id})
        out = self._apply(fn)
        self._emit("change.applied", {"change_id": change_id})
        return out

    # --- runtime ---------------------------------------------------------------------------
    def start(self) -> None:
        """Record ``run.started``; a halt already in force ends the run at once."""
        self._emit("run.started", self.spec.started_data())
        halt = self._halt()
        if halt is not None:
            self._halted(halt)

    def finish(self, outcome: str, result: Mapping[str, Any] | None, error: str | None) -> None:
        """Record ``run.completed``."""
        data: dict[str, Any] = {"outcome": outcome}
        if result is not None:
            data["result"] = normalise(dict(result))
        if error is not None:
            data["error"] = error[:2000]
        self.finished = True
        self._emit("run.completed", data)

    def _emit(self, etype: str, data: dict[str, Any], advance_ms: Any = 0) -> dict[str, Any]:
        event, canonical = self.log.build(etype, data, self._stamp(self.log.seq, etype, advance_ms))
        self._publish(event, canonical)
        self._after_emit(event)
        return event

    def _guard(self, *, next_model_call: bool = False, side_effect: str | None = None) -> None:
        """Before a step: a stopped run stays stopped; halts; the deadline and the call cap."""
        if self._stop is not None:
            raise self._stop
        halt = self._halt(side_effect)
        if halt is not None:
            self._halted(halt)
        b = self.budget
        if b.get("deadline_s") is not None:
            elapsed = self._elapsed_s()
            if elapsed is not None and elapsed > _dec(b["deadline_s"]):
                self._breach("deadline", _dec(b["deadline_s"]), elapsed)
        cap = b.get("max_model_calls")
        if next_model_call and cap is not None and self.model_calls + 1 > int(cap):
            self._breach("model_calls", Decimal(int(cap)), Decimal(self.model_calls + 1))
        self._check_usage()
        if next_model_call and b.get("max_cost_usd") is not None and not self._priced(self.model):
            raise PricingError(
                f"no price for model {self.model!r}, so this run's cost cap of {b['max_cost_usd']} USD "
                "cannot be enforced; add the model to a price file (TACHO_PRICES)")

    def _enforce(self, kind: str, name: str, args: Mapping[str, Any], side_effect: str,
                 change_id: str | None = None) -> None:
        """Ask the policy engine about a tool call or a change before it happens, record its
        answer (``policy.evaluated`` with the revision and decision id), and enforce it: deny
        raises :class:`PolicyDenied` (the action does not happen); require_approval waits for a
        person (``request_approval``) and raises PolicyDenied when not approved.

        An answer other than allow also records the action's ``arguments``: the action may never
        run, and what-if policy replay needs them to ask another policy about it."""
        used = {"model_calls": self.model_calls, "tokens": self.tokens, "cost_usd": self.cost}
        asked = policy_input(
            workspace=self.spec.workspace, workflow=self.spec.workflow, run_id=self.spec.run_id,
            agent=self.spec.agent, mode=self.spec.mode, risk_tier=self.spec.risk_tier, kind=kind,
            name=name, arguments=args, side_effect=side_effect, limits=self.budget, used=used)
        found = self._evaluate(asked, kind, name, side_effect)
        if found is None:
            return
        data: dict[str, Any] = {"policy": found.policy, "action": name, "decision": found.decision,
                                "reason": found.reason}
        if found.revision is not None:
            data["revision"] = found.revision
        if found.decision_id is not None:
            data["decision_id"] = found.decision_id
        if found.decision != "allow" and found.with_arguments:
            data["arguments"] = dict(args)
        self._emit("policy.evaluated", data)
        if found.decision == "deny":
            raise PolicyDenied(name, found.reason)
        if found.decision == "require_approval" and not self.request_approval(
                f"{name}: {found.reason}", _risk(self.spec.risk_tier), change_id):
            raise PolicyDenied(name, f"not approved by a person ({found.reason})", "require_approval")

    def _check_usage(self) -> None:
        b = self.budget
        if b.get("max_tokens") is not None and self.tokens > int(b["max_tokens"]):
            self._breach("tokens", Decimal(int(b["max_tokens"])), Decimal(self.tokens))
        if b.get("max_cost_usd") is not None and self.cost > _dec(b["max_cost_usd"]):
            self._breach("cost_usd", _dec(b["max_cost_usd"]), self.cost)

    def _breach(self, limit: str, limit_value: Decimal, observed: Decimal) -> None:
        self._emit("budget.exceeded", {"limit": limit, "limit_value": limit_value, "observed": observed})
        self._stop = RunStop("cancelled", str(BudgetExceeded(limit, limit_value, observed)),
                             {"budget_exceeded": limit})
        raise self._stop

    def _halted(self, halt: Halt) -> None:
        self._stop = RunStop("cancelled", halt.refusal(), {"kill_switch": halt.evidence()})
        raise self._stop

    def _priced(self, model: str) -> bool:
        return self.prices.known(model)

    # --- what live and replay contexts differ in ----------------------------------------------
    def _stamp(self, seq: int, etype: str, advance_ms: Any) -> str:
        raise NotImplementedError

    def _publish(self, event: dict[str, Any], canonical: bytes) -> None:
        """Hook: live contexts send each event to the platform as it is made."""

    def _after_emit(self, event: dict[str, Any]) -> None:
        """Hook: replay contexts compare each event with the recording here."""

    def _halt(self, side_effect: str | None = None) -> Halt | None:
        """Hook: the halt in force on this run (live only), None when it may go on."""
        return None

    def _evaluate(self, policy_input: dict[str, Any], kind: str, name: str,
                  side_effect: str) -> Evaluation | None:
        """Hook: the policy engine's decision on an action (None: no policy engine configured)."""
        return None

    def _default_approval_timeout(self) -> Decimal | float:
        """Hook: how long a ``request_approval`` without ``timeout`` waits."""
        return DEFAULT_APPROVAL_TIMEOUT_S

    def _elapsed_s(self) -> Decimal | None:
        """Hook: seconds since ``run.started`` on the run's clock (None: no deadline check)."""
        return None

    def _apply(self, fn: Callable[[], Any] | None) -> Any:
        """Hook: perform a change's side effect (live, not dry-run)."""
        return None

    def _answer_model(self, call_id: str, request: dict[str, Any]) -> ModelAnswer:
        raise NotImplementedError

    def _answer_tool(self, call_id: str, name: str, args: dict[str, Any]) -> ToolAnswer:
        raise NotImplementedError

    def _answer_approval(
        self, approval_id: str, summary: str, risk: str, change_id: str | None, timeout: float
    ) -> ApprovalDecision | None:
        raise NotImplementedError


def run_agent(agent: Agent, ctx: Context) -> list[dict[str, Any]]:
    """Run agent code over a context from ``run.started`` to ``run.completed``; return the events.

    Agent code returns its result object; a ``"outcome"`` key in it (succeeded, failed,
    escalated, cancelled) sets the outcome, default succeeded. A budget breach or a halt ends the
    run cancelled; an unhandled tool failure or agent error ends it failed (with the error).
    Errors of the runtime's own configuration (no adapter or price for a model) end it failed
    and are raised after ``run.completed`` is recorded.
    """
    raised: BaseException | None = None
    try:
        ctx.start()
        try:
            result = agent(ctx, dict(ctx.spec.input or {}))
        except BudgetExceeded as e:  # agent code raised it itself
            raise RunStop("cancelled", str(e)) from e
        except ToolFailed as e:
            raise RunStop("failed", str(e)) from e
        except (ModelError, UnknownModelError, PricingError) as e:
            raised = e
            raise RunStop("failed", f"{type(e).__name__}: {e}") from e
        except (RunStop, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # agent code bugs end the run failed, with the error recorded
            raise RunStop("failed", f"{type(e).__name__}: {e}") from e
    except RunStop as e:
        if not ctx.finished:
            ctx.finish(e.outcome, e.result, e.error)
        if raised is not None:
            raise raised from None
        return ctx.events
    out = dict(result or {})
    outcome = out.get("outcome", "succeeded")
    if outcome not in OUTCOMES:
        ctx.finish("failed", None, f"agent returned unknown outcome {outcome!r}")
    else:
        ctx.finish(outcome, out, None)
    return ctx.events


__all__ = [
    "OUTCOMES", "Agent", "AgentError", "ApprovalDecision", "Context", "ModelAnswer", "Reply",
    "RunStop", "ToolAnswer", "advance", "format_time", "money_text", "run_agent",
]
