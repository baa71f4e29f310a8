"""The publisher SDK: agent services record their runs as contract events, with budgets enforced.

Usage::

    publisher = Publisher(KafkaTransport("localhost:9092", "agent-events"),
                          workspace="acme", agent_id="triage-agent", agent_version="2.4.0")
    with publisher.run("ticket-triage", budget=Budget(max_cost_usd=Decimal("0.25"))) as run:
        run.model_call(provider="openai", model="gpt-4.1-mini", input_tokens=900,
                       output_tokens=120, cost_usd=Decimal("0.000552"), latency_ms=640)
        rows = run.tool_call("crm.lookup", {"id": 42}, fn=crm_lookup)
        run.complete("succeeded", result={"rows": len(rows)})

Every event is validated against the contract and the run rules *before* it is sent (bad use
raises at once, naming the problem). ``event_id``, ``seq`` and ``time`` come from an injected
id factory and clock, so a replay runtime can drive the same code deterministically.

Kill switches: with ``halts`` (``ingest.halt_client.HttpHalts`` over the API, or
``ingest.halts.LedgerHalts`` in the embedded mode) a run is checked before it starts and before
every step; a halted run ends ``cancelled`` with the halt recorded and raises
:class:`RunHaltedError`.
"""

from __future__ import annotations

import time as _time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from domain.errors import RunRuleError
from ingest.errors import BudgetExceededError, RunClosedError, RunHaltedError
from tachograph.contract.canonical import validate_event
from tachograph.contract.events import SPEC
from tachograph.contract.rules import RunState
from tachograph.halts import Halt, HaltSource
from tachograph.transports import Transport

Clock = Callable[[], datetime]
IdFactory = Callable[[], str]
Mode = Literal["suggest", "execute", "dry_run"]
Outcome = Literal["succeeded", "failed", "escalated", "cancelled"]


def system_clock() -> datetime:
    """Wall-clock time in UTC (the default clock outside replay and tests)."""
    return datetime.now(UTC)


def random_id() -> str:
    """A random 32-hex id (the default id factory)."""
    return uuid.uuid4().hex


def rfc3339(t: datetime) -> str:
    """RFC 3339 text with milliseconds and a ``Z`` for UTC."""
    if t.tzinfo is None:
        raise ValueError("the SDK clock must return timezone-aware datetimes")
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _money(value: Decimal | str | int) -> Decimal:
    if isinstance(value, float):
        raise TypeError("money must be a Decimal, int or decimal string, never a float")
    return value if isinstance(value, Decimal) else Decimal(value)


@dataclass(frozen=True)
class Budget:
    """Caps on one run; ``None`` means no cap."""

    max_model_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: Decimal | None = None
    deadline_s: Decimal | int | None = None

    def to_json(self) -> dict[str, Any]:
        """The budget as it is written into ``run.started``."""
        out: dict[str, Any] = {}
        if self.max_model_calls is not None:
            out["max_model_calls"] = self.max_model_calls
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.max_cost_usd is not None:
            out["max_cost_usd"] = _money(self.max_cost_usd)
        if self.deadline_s is not None:
            out["deadline_s"] = Decimal(str(self.deadline_s))
        return out


@dataclass(frozen=True)
class ModelResult:
    """What a model call returned, as ``RunRecorder.call_model`` records it."""

    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    content: Any = None
    finish_reason: str | None = "stop"
    tool_calls: list[Any] | None = None
    confidence: Decimal | None = None


@dataclass
class Usage:
    """What a run has used so far."""

    model_calls: int = 0
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)


class Publisher:
    """Records runs for one agent identity in one workspace over a transport."""

    def __init__(
        self,
        transport: Transport,
        *,
        workspace: str,
        agent_id: str,
        agent_version: str,
        clock: Clock = system_clock,
        ids: IdFactory = random_id,
        flush_on_exit: bool = True,
        flush_timeout: float | None = None,
        halts: HaltSource | None = None,
    ) -> None:
        """``halts``: where the kill switches are read (``HttpHalts`` over the API, or
        ``LedgerHalts`` of the embedded ledger); None: this publisher never checks them."""
        self.transport = transport
        self.workspace = workspace
        self.agent = {"id": agent_id, "version": agent_version}
        self.clock = clock
        self.ids = ids
        self.flush_on_exit = flush_on_exit
        self.flush_timeout = flush_timeout
        self.halts = halts

    def start(
        self,
        workflow: str,
        *,
        mode: Mode = "execute",
        risk_tier: Literal["low", "medium", "high"] = "low",
        budget: Budget | None = None,
        input: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        run_id: str | None = None,
        replay_of: str | None = None,
        dry_run: bool = False,
    ) -> RunRecorder:
        """Record ``run.started`` and return the open run; it stays open until ``complete()``
        (for runs that outlive a block, e.g. waiting for a person's approval).

        If a halt stops the run (its workspace, workflow, agent or run id is halted), the run is
        recorded as started and at once cancelled with who halted it, when and why, and
        :class:`RunHaltedError` is raised. Halts that cannot be read raise
        ``HaltsUnavailableError`` before anything is recorded (fail closed). Replays
        (``replay_of``) are never halted.
        """
        run_id = run_id or self.ids()
        halt = None if replay_of is not None else self.halt_of(workflow, run_id)
        recorder = RunRecorder(
            self,
            run_id,
            workflow,
            mode="dry_run" if dry_run else mode,
            risk_tier=risk_tier,
            budget=budget or Budget(),
            input=input,
            labels=labels,
            replay_of=replay_of,
        )
        if halt is not None:
            recorder.stop(halt)
        return recorder

    @contextmanager
    def run(
        self,
        workflow: str,
        *,
        mode: Mode = "execute",
        risk_tier: Literal["low", "medium", "high"] = "low",
        budget: Budget | None = None,
        input: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        run_id: str | None = None,
        replay_of: str | None = None,
        dry_run: bool = False,
    ) -> Iterator[RunRecorder]:
        """Record one run: ``run.started`` now, ``run.completed`` on exit if not done already.

        Leaving the block normally completes the run as ``succeeded``; an exception completes
        it as ``failed`` (with the error) and propagates. ``dry_run`` (or ``mode="dry_run"``)
        records the run with ``mode = dry_run`` and the tool helpers do not execute tools.

        A halted run (see :meth:`start`) raises :class:`RunHaltedError` before the block runs,
        after recording the refused run as cancelled; a halt set while the block runs stops it
        at its next step the same way.
        """
        recorder = self.start(workflow, mode=mode, risk_tier=risk_tier, budget=budget, input=input,
                              labels=labels, run_id=run_id, replay_of=replay_of, dry_run=dry_run)
        try:
            yield recorder
        except (BudgetExceededError, RunHaltedError):
            raise  # already recorded: run.completed(cancelled) with why
        except BaseException as e:
            if not recorder.completed:
                recorder.complete("failed", error=f"{type(e).__name__}: {e}"[:2000])
            raise
        else:
            if not recorder.completed:
                recorder.complete("succeeded")
        finally:
            if self.flush_on_exit:
                self.transport.flush(self.flush_timeout)

    def halt_of(self, workflow: str, run_id: str) -> Halt | None:
        """The halt in force on this run, if any (None without ``halts``)."""
        if self.halts is None:
            return None
        return self.halts.current(self.workspace).find(workflow, self.agent["id"], run_id)

    def flush(self) -> None:
        """Wait until every recorded event is delivered."""
        self.transport.flush(self.flush_timeout)


class RunRecorder:
    """One run in progress: each method records one contract event (and enforces budgets)."""

    def __init__(
        self,
        publisher: Publisher,
        run_id: str,
        workflow: str,
        *,
        mode: Mode,
        risk_tier: str,
        budget: Budget,
        input: dict[str, Any] | None,
        labels: dict[str, str] | None,
        replay_of: str | None,
    ) -> None:
        self.publisher = publisher
        self.run_id = run_id
        self.workflow = workflow
        self.mode = mode
        self.budget = budget
        self.usage = Usage()
        self.replay_of = replay_of
        self.state = RunState(publisher.workspace, run_id)
        self.seq = 0
        self.completed = False
        self.outcome: str | None = None
        self.event_ids: list[str] = []
        self._calls = 0
        self.started_at = publisher.clock()
        data: dict[str, Any] = {"workflow": workflow, "mode": mode, "risk_tier": risk_tier}
        if budget.to_json():
            data["budget"] = budget.to_json()
        if input is not None:
            data["input"] = input
        if labels is not None:
            data["labels"] = labels
        if replay_of is not None:
            data["replay_of"] = replay_of
        self._emit("run.started", data, at=self.started_at)

    @property
    def dry_run(self) -> bool:
        """Whether tools are only recorded, never executed."""
        return self.mode == "dry_run"

    # -- recording -------------------------------------------------------------------------
    def _emit(self, etype: str, data: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
        if self.completed and etype != "feedback.recorded":
            raise RunClosedError(
                f"run {self.run_id!r} is completed ({self.outcome}); cannot record {etype}"
            )
        event: dict[str, Any] = {
            "spec": SPEC,
            "event_id": self.publisher.ids(),
            "workspace": self.publisher.workspace,
            "run_id": self.run_id,
            "seq": self.seq,
            "type": etype,
            "time": rfc3339(at or self.publisher.clock()),
            "agent": self.publisher.agent,
            "data": data,
        }
        event, canonical = validate_event(event)  # ContractError names the bad field
        self.state.check(event)  # RunRuleError names the broken rule
        self.publisher.transport.send(self.run_id, event["event_id"], canonical)
        self.state.apply(event, "sdk")
        self.seq += 1
        self.event_ids.append(event["event_id"])
        if etype == "run.completed":
            self.completed = True
            self.outcome = data["outcome"]
        return event

    def _next_id(self, prefix: str) -> str:
        self._calls += 1
        return f"{prefix}{self._calls}"

    def elapsed_s(self) -> Decimal:
        """Seconds since the run started, by the injected clock (millisecond precision)."""
        delta = self.publisher.clock() - self.started_at
        return Decimal(int(delta.total_seconds() * 1000)) / 1000

    def check_budget(self, next_model_call: bool = False) -> None:
        """Raise BudgetExceededError (after recording it) if a cap is crossed.

        With ``next_model_call``, also refuse when one more model call would exceed
        ``max_model_calls`` (the call is then never made).
        """
        b, u = self.budget, self.usage
        if b.deadline_s is not None:
            elapsed = self.elapsed_s()
            if elapsed > Decimal(str(b.deadline_s)):
                self._breach("deadline", Decimal(str(b.deadline_s)), elapsed)
        if b.max_model_calls is not None:
            calls = u.model_calls + (1 if next_model_call else 0)
            if calls > b.max_model_calls:
                self._breach("model_calls", Decimal(b.max_model_calls), Decimal(calls))
        if b.max_tokens is not None and u.tokens > b.max_tokens:
            self._breach("tokens", Decimal(b.max_tokens), Decimal(u.tokens))
        if b.max_cost_usd is not None and u.cost_usd > _money(b.max_cost_usd):
            self._breach("cost_usd", _money(b.max_cost_usd), u.cost_usd)

    def check_halt(self) -> None:
        """Stop the run (RunHaltedError, after recording it) if a halt is in force on it."""
        if self.replay_of is None and not self.completed:
            halt = self.publisher.halt_of(self.workflow, self.run_id)
            if halt is not None:
                self.stop(halt)

    def stop(self, halt: Halt) -> None:
        """End the run ``cancelled`` with the halt recorded, flush, raise RunHaltedError."""
        self._emit("run.completed", {"outcome": "cancelled", "result": {"kill_switch": halt.evidence()},
                                     "error": halt.refusal()[:2000]})
        self.publisher.transport.flush(self.publisher.flush_timeout)
        raise RunHaltedError(self.run_id, halt, list(self.event_ids))

    def _breach(self, limit: str, limit_value: Decimal, observed: Decimal) -> None:
        self._emit(
            "budget.exceeded", {"limit": limit, "limit_value": limit_value, "observed": observed}
        )
        self._emit(
            "run.completed",
            {"outcome": "cancelled", "error": f"budget exceeded: {limit} {observed} > {limit_value}"},
        )
        raise BudgetExceededError(self.run_id, limit, limit_value, observed)

    def model_call(
        self,
        *,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: Decimal | str | int,
        latency_ms: int | Decimal,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
        confidence: Decimal | None = None,
        call_id: str | None = None,
    ) -> str:
        """Record a model call that happened; then enforce the budget. Returns the call id."""
        call_id = call_id or self._next_id("m")
        data: dict[str, Any] = {
            "call_id": call_id,
            "provider": provider,
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": _money(cost_usd),
            "latency_ms": latency_ms,
        }
        if request is not None:
            data["request"] = request
        if response is not None:
            data["response"] = response
        if confidence is not None:
            data["confidence"] = confidence
        self._emit("model.called", data)
        self.usage.model_calls += 1
        self.usage.tokens += input_tokens + output_tokens
        self.usage.cost_usd += _money(cost_usd)
        self.check_budget()
        self.check_halt()  # the call happened and is recorded; the next step does not run
        return call_id

    def call_model(
        self,
        fn: Callable[[], ModelResult],
        *,
        provider: str,
        model: str,
        messages: list[dict[str, Any]] | None = None,
        params: dict[str, Any] | None = None,
    ) -> ModelResult:
        """Check halts and the budget, call ``fn`` (the real model call), time it and record it."""
        self.check_halt()
        self.check_budget(next_model_call=True)
        t0 = _time.perf_counter()
        result = fn()
        latency = int((_time.perf_counter() - t0) * 1000)
        response: dict[str, Any] = {"content": result.content}
        if result.finish_reason is not None:
            response["finish_reason"] = result.finish_reason
        if result.tool_calls is not None:
            response["tool_calls"] = result.tool_calls
        self.model_call(
            provider=provider,
            model=model,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            cost_usd=result.cost_usd,
            latency_ms=latency,
            request={"messages": messages, **({"params": params} if params else {})}
            if messages is not None
            else None,
            response=response,
            confidence=result.confidence,
        )
        return result

    def tool_call(
        self,
        tool: str,
        args: dict[str, Any],
        fn: Callable[..., Any] | None = None,
        *,
        side_effect: Literal["none", "read", "write"] = "read",
        result: Any = None,
        error: str | None = None,
        latency_ms: int | None = None,
        idempotency_key: str | None = None,
        call_id: str | None = None,
    ) -> Any:
        """Run ``fn(**args)`` (not in dry-run mode) and record it; re-raise its exception.

        Without ``fn``, record a call made elsewhere (``result`` or ``error``, ``latency_ms``).
        Halts are checked before ``fn`` runs (without ``fn``: after the call is recorded).
        """
        if fn is not None:
            self.check_halt()
        self.check_budget()
        call_id = call_id or self._next_id("t")
        status: Literal["ok", "error"] = "error" if error is not None else "ok"
        raised: BaseException | None = None
        t0 = _time.perf_counter()
        if fn is not None and self.dry_run:
            result = {"dry_run": True, "executed": False}
        elif fn is not None:
            try:
                result = fn(**args)
            except Exception as e:
                raised, status, error = e, "error", f"{type(e).__name__}: {e}"
        measured = int((_time.perf_counter() - t0) * 1000)
        data: dict[str, Any] = {
            "call_id": call_id,
            "tool": tool,
            "args": args,
            "status": status,
            "latency_ms": latency_ms if latency_ms is not None else measured,
            "side_effect": side_effect,
        }
        if status == "ok" and result is not None:
            data["result"] = result
        if error is not None:
            data["error"] = error
        if idempotency_key is not None:
            data["idempotency_key"] = idempotency_key
        self._emit("tool.called", data)
        if raised is not None:
            raise raised
        if fn is None:
            self.check_halt()
        return result

    def policy(
        self,
        policy: str,
        action: str,
        decision: Literal["allow", "deny", "require_approval"],
        reason: str,
        risk_score: Decimal | None = None,
    ) -> str:
        """Record a policy decision (halts checked first); returns the decision."""
        self.check_halt()
        data: dict[str, Any] = {"policy": policy, "action": action, "decision": decision, "reason": reason}
        if risk_score is not None:
            data["risk_score"] = risk_score
        self._emit("policy.evaluated", data)
        return decision

    def request_approval(
        self,
        summary: str,
        risk: Literal["low", "medium", "high"],
        change_id: str | None = None,
        approval_id: str | None = None,
    ) -> str:
        """Record an approval request (halts checked first); returns its approval id."""
        self.check_halt()
        approval_id = approval_id or self._next_id("a")
        data: dict[str, Any] = {"approval_id": approval_id, "summary": summary, "risk": risk}
        if change_id is not None:
            data["change_id"] = change_id
        self._emit("approval.requested", data)
        return approval_id

    def decide_approval(
        self,
        approval_id: str,
        decision: Literal["approved", "rejected"],
        by: str,
        reason: str | None = None,
    ) -> bool:
        """Record a person's decision on an approval; returns whether it was approved."""
        data: dict[str, Any] = {"approval_id": approval_id, "decision": decision, "by": by}
        if reason is not None:
            data["reason"] = reason
        self._emit("approval.decided", data)
        return decision == "approved"

    def propose_change(
        self,
        target: str,
        before: dict[str, Any],
        after: dict[str, Any],
        reversible: bool = True,
        change_id: str | None = None,
    ) -> str:
        """Record a proposed change (halts checked first); returns its change id."""
        self.check_halt()
        change_id = change_id or self._next_id("c")
        self._emit(
            "change.proposed",
            {"change_id": change_id, "target": target, "before": before, "after": after,
             "reversible": reversible},
        )
        return change_id

    def apply_change(self, change_id: str, fn: Callable[[], Any] | None = None) -> Any:
        """Apply a proposed change with ``fn`` (skipped in dry-run mode) and record it.

        The run rules are checked first: a change that needed approval and has none raises
        RunRuleError and ``fn`` is never called. If ``fn`` raises, nothing is recorded. A halt
        stops the run before ``fn`` runs.
        """
        self.check_halt()
        self.check_budget()
        probe = {"type": "change.applied", "seq": self.seq, "data": {"change_id": change_id}}
        if self.completed:
            raise RunClosedError(f"run {self.run_id!r} is completed; cannot apply {change_id!r}")
        self.state.check(probe)
        out = None if fn is None or self.dry_run else fn()
        self._emit("change.applied", {"change_id": change_id})
        return out

    def revert_change(self, change_id: str, by: str, reason: str | None = None) -> None:
        """Record that an applied, reversible change was reverted."""
        data: dict[str, Any] = {"change_id": change_id, "by": by}
        if reason is not None:
            data["reason"] = reason
        self._emit("change.reverted", data)

    def complete(
        self,
        outcome: Outcome = "succeeded",
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Record the run's outcome (once)."""
        data: dict[str, Any] = {"outcome": outcome}
        if result is not None:
            data["result"] = result
        if error is not None:
            data["error"] = error
        self._emit("run.completed", data)

    def feedback(self, accepted: bool, by: str, comment: str | None = None) -> None:
        """Record a person's feedback on the completed run."""
        if not self.completed:
            raise RunRuleError("feedback.recorded before run.completed: complete the run first")
        data: dict[str, Any] = {"accepted": accepted, "by": by}
        if comment is not None:
            data["comment"] = comment
        self._emit("feedback.recorded", data)
