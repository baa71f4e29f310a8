"""Replay contexts: the same agent code, answered from a recording (fidelity) or a candidate.

:class:`ReplayContext` is a :class:`tachograph.context.Context` like the live one: agent code
cannot tell them apart. It differs only in its hooks: answers come from the recording or a
candidate model, time is the recording's, no side effect is ever performed, and no kill switch in
force now stops a replay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from replay.history import RecordedRun
from tachograph.builder import RunSpec, parse_time
from tachograph.context import (
    ApprovalDecision,
    Context,
    Evaluation,
    ModelAnswer,
    RunStop,
    ToolAnswer,
    advance,
    money_text,
)
from tachograph.contract.canonical import dumps
from tachograph.halts import Halt
from tachograph.models import ChatRequest, ModelRegistry, call_cost
from tachograph.tools import ToolRegistry

REPLAY_LABELS = ("replay.id", "replay.candidate", "replay.mode")
APPROVAL_EVENTS = ("approval.requested", "approval.decided")


@dataclass(frozen=True)
class Divergence:
    """The first step where a replay differs from its recording (a value, never an exception)."""

    seq: int
    kind: str
    expected: Any
    actual: Any

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"seq": self.seq, "kind": self.kind, "expected": self.expected, "actual": self.actual}


def own_approval_id(approval_id: str, run_id: str) -> str:
    """An approval id without its run's own prefix (``<run_id>/approval-2`` → ``approval-2``).

    Approval ids are unique in a workspace because they start with the run id; a replay is
    another run, so its approvals differ from the recording's by that prefix alone.
    """
    prefix = f"{run_id}/"
    return approval_id[len(prefix):] if approval_id.startswith(prefix) else approval_id


def comparable(event: Mapping[str, Any] | None) -> Any:
    """The parts of an event a fidelity replay must reproduce: its type and data.

    What names the replay rather than the run is left out: ``replay_of`` and the replay labels
    of ``run.started``, the run's own prefix of approval ids, and ``replayed_from``.
    """
    if event is None:
        return None
    data = dict(event["data"])
    if event["type"] == "run.started":
        data.pop("replay_of", None)
        labels = {k: v for k, v in (data.get("labels") or {}).items() if k not in REPLAY_LABELS}
        data.pop("labels", None)
        if labels:
            data["labels"] = labels
    elif event["type"] in APPROVAL_EVENTS:
        data["approval_id"] = own_approval_id(str(data["approval_id"]), str(event["run_id"]))
        data.pop("replayed_from", None)
    return {"type": event["type"], "data": data}


def _same(a: Any, b: Any) -> bool:
    return dumps(a) == dumps(b)


def _millis(micros: int) -> Decimal:
    """Microseconds as seconds in whole milliseconds, truncated as the live runtime measures them."""
    return Decimal(micros // 1000) / 1000


class ReplayContext(Context):
    """Answers agent code from a recorded run.

    ``fidelity``: model responses, tool results, approvals, recorded halts and the deadline come
    from the recording, and every event must equal the recorded one at the same seq; the first
    difference stops the run. ``what-if``: model calls go to the candidate model (with candidate
    prompts); a tool call is answered from the recording while tool and canonical args match the
    next recorded call; after a divergence only a registered side-effect-free stand-in is
    called, otherwise the run stops. A live tool is never called and no change's side effect is
    ever performed.
    """

    def __init__(
        self,
        spec: RunSpec,
        recorded: RecordedRun,
        *,
        mode: str,
        tools: ToolRegistry,
        prompts: Mapping[str, str],
        models: ModelRegistry,
        candidate_model: str | None = None,
    ) -> None:
        rec_models = [e["data"]["model"] for e in recorded.events if e["type"] == "model.called"]
        model = candidate_model or (rec_models[0] if rec_models else "sim-small-v1")
        super().__init__(spec, tools=tools, prompts=prompts, model=model, prices=models.prices)
        self.recorded = recorded.events
        self.mode = mode
        self.models = models
        self.candidate_model = candidate_model
        self.divergence: Divergence | None = None
        self.approvals_required: list[str] = []
        self._rec_models = [e for e in self.recorded if e["type"] == "model.called"]
        self._rec_tools = [e for e in self.recorded if e["type"] == "tool.called"]
        self._rec_approvals = _approvals(self.recorded)
        self._model_i = 0
        self._tool_i = 0

    def _aligned_slot(self) -> dict[str, Any] | None:
        """The recorded event at the next seq while the replay has not diverged, else None."""
        seq = len(self.events)
        if self.divergence is not None or seq >= len(self.recorded):
            return None
        return self.recorded[seq]

    def _evaluate(self, policy_input: dict[str, Any], kind: str, name: str,
                  side_effect: str) -> Evaluation | None:
        """The policy engine's recorded decision on this action (a runtime-enforced
        ``policy.evaluated`` just before the call), while the replay follows its recording; a
        replay never asks a policy engine itself. Arguments are recorded as the recording did
        (runs recorded before ``arguments`` existed have none)."""
        rec = self._aligned_slot()
        if rec is None or rec["type"] != "policy.evaluated" or rec["data"].get("action") != name:
            return None
        d = rec["data"]
        return Evaluation(str(d["policy"]), str(d["decision"]), str(d["reason"]), d.get("revision"),
                          d.get("decision_id"), with_arguments="arguments" in d)

    def _default_approval_timeout(self) -> Decimal | float:
        """The recorded request's timeout, exactly as recorded (the live runtime's default then),
        else the default."""
        rec = self._aligned_slot()
        if rec is not None and rec["type"] == "approval.requested" and rec["data"].get("timeout_s"):
            return Decimal(str(rec["data"]["timeout_s"]))
        return super()._default_approval_timeout()

    # --- time: recorded while aligned, then advanced by latencies -------------------------------
    def _stamp(self, seq: int, etype: str, advance_ms: Any) -> str:
        if self.divergence is None and seq < len(self.recorded) and self.recorded[seq]["type"] == etype:
            return str(self.recorded[seq]["time"])
        last = self.events[-1]["time"] if self.events else self.recorded[0]["time"]
        return advance(last, advance_ms)

    def _elapsed_s(self) -> Decimal:
        """Seconds since ``run.started`` on the replay's clock, as the recording measured them.

        Where the recording crossed its deadline at this step, its ``observed`` value (so the
        ``budget.exceeded`` event reproduces exactly). Otherwise the time of the latest event:
        the recorded time while aligned, the advanced time after. That never exceeds what the
        live run measured at the same step (it read its clock after that event), so a deadline
        the recording did not cross is not crossed in replay either.
        """
        rec = self._aligned_slot()
        if rec is not None and rec["type"] == "budget.exceeded" and rec["data"]["limit"] == "deadline":
            return Decimal(str(rec["data"]["observed"]))
        delta = parse_time(self.events[-1]["time"]) - parse_time(self.events[0]["time"])
        return _millis((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)

    # --- the world: never touched ------------------------------------------------------------------
    def _halt(self, side_effect: str | None = None) -> Halt | None:
        """No kill switch in force now stops a replay; a fidelity replay reproduces the halt its
        recording shows at this step (the recorded ``halt.set`` evidence, as it was)."""
        rec = self._aligned_slot() if self.mode == "fidelity" else None
        if rec is None or rec["type"] != "run.completed":
            return None
        return recorded_halt(rec["data"])

    def _apply(self, fn: Callable[[], Any] | None) -> Any:
        """A replay never performs a change's side effect."""
        return None

    def _priced(self, model: str) -> bool:
        # fidelity: every cost comes from the recording, priced or not, whatever today's table says
        return self.mode == "fidelity" or super()._priced(model)

    # --- comparing with the recording ----------------------------------------------------------------
    def _diverge(self, seq: int, kind: str, expected: Any, actual: Any) -> None:
        if self.divergence is None:
            self.divergence = Divergence(seq, kind, expected, actual)

    def _after_emit(self, event: dict[str, Any]) -> None:
        if self.mode != "fidelity" or self.divergence is not None:
            return
        seq = event["seq"]
        expected = comparable(self.recorded[seq]) if seq < len(self.recorded) else None
        actual = comparable(event)
        if not _same(expected, actual):
            self._diverge(seq, "event", expected, actual)
            if event["type"] != "run.completed":
                raise RunStop("failed", f"non-determinism at seq {seq}: the agent did not reproduce its recording")

    def _fidelity_slot(self, etype: str, actual: Any) -> dict[str, Any]:
        seq = len(self.events)
        rec = self.recorded[seq] if seq < len(self.recorded) else None
        if rec is None or rec["type"] != etype:
            self._diverge(seq, "event", comparable(rec), actual)
            raise RunStop("failed", f"non-determinism at seq {seq}: expected {rec['type'] if rec else 'the end of the run'}, got {etype}")
        return rec

    # --- answers -----------------------------------------------------------------------------------
    def _answer_model(self, call_id: str, request: dict[str, Any]) -> ModelAnswer:
        if self.mode == "fidelity":
            rec = self._fidelity_slot("model.called", {"type": "model.called", "request": request})
            d = rec["data"]
            response = d.get("response")
            if response is None:
                seq = len(self.events)
                self._diverge(seq, "unreplayable", "a recorded model response", None)
                raise RunStop("failed", f"model call at seq {seq} was recorded without its response")
            return ModelAnswer(
                d["model"], d["provider"], response.get("content"), d["input_tokens"],
                d["output_tokens"], None if d.get("priced") is False else d["cost_usd"], d["latency_ms"],
                response.get("finish_reason"), response.get("tool_calls"),
            )
        if self.candidate_model is not None:
            name = self.candidate_model
        elif self._model_i < len(self._rec_models):
            name = self._rec_models[self._model_i]["data"]["model"]
        else:
            name = self.model
        self._model_i += 1
        adapter = self.models.get(name)
        r = adapter.complete(ChatRequest(name, tuple(request["messages"]), request.get("params") or {}))
        # priced as of the recorded run (reproducible); unknown: recorded unpriced, not refused
        cost = call_cost(self.prices, adapter, r.input_tokens, r.output_tokens,
                         at=parse_time(str(self.recorded[0]["time"])))
        return ModelAnswer(
            adapter.name, adapter.provider, r.content, r.input_tokens, r.output_tokens,
            None if cost is None else money_text(cost), r.latency_ms, r.finish_reason, r.tool_calls,
        )

    def _answer_tool(self, call_id: str, name: str, args: dict[str, Any]) -> ToolAnswer:
        seq = len(self.events)
        if self.mode == "fidelity":
            rec = self._fidelity_slot("tool.called", {"type": "tool.called", "tool": name, "args": args})
            return _recorded_tool(rec["data"])
        if self.divergence is None:
            nxt = self._rec_tools[self._tool_i]["data"] if self._tool_i < len(self._rec_tools) else None
            if nxt is not None and nxt["tool"] == name and _same(nxt["args"], args):
                self._tool_i += 1
                return _recorded_tool(nxt)
            self._diverge(
                seq, "tool",
                None if nxt is None else {"tool": nxt["tool"], "args": nxt["args"]},
                {"tool": name, "args": args},
            )
        tool = self.tools.get(name)
        stand_in = tool.replay_stand_in()
        if stand_in is None:
            raise RunStop(
                "cancelled",
                f"replay stopped at seq {seq}: {name} diverged from the recording and has "
                f"{tool.side_effect} side effects and no simulator",
                {"replay_stopped": name},
            )
        try:
            result = stand_in(args)
        except Exception as e:  # the simulator's failure is the tool's recorded error
            return ToolAnswer("error", None, f"{type(e).__name__}: {e}", 0, tool.side_effect)
        return ToolAnswer("ok", result, None, 0, tool.side_effect)

    def _answer_approval(
        self, approval_id: str, summary: str, risk: str, change_id: str | None, timeout: float
    ) -> ApprovalDecision | None:
        """The recorded person's decision, repeated (``replayed_from`` names the recorded approval).

        Fidelity: the decision recorded right after the request (none: it expired, and the run
        takes its not-approved path, as recorded). What-if: the recorded approval with the same
        summary and risk; one the recording never asked for ends the run ``escalated`` with the
        approval pending (a person would have to decide) and is listed as now required.
        """
        if self.mode == "fidelity":
            halt = self._halt()  # the recording was halted while it waited
            if halt is not None:
                self._halted(halt)
            rec = self._aligned_slot()
            if rec is None or rec["type"] != "approval.decided":
                return None
            return _repeated(rec["data"], str(rec["data"]["approval_id"]))
        for i, (req, decided) in enumerate(self._rec_approvals):
            if req["summary"] == summary and req["risk"] == risk:
                self._rec_approvals.pop(i)
                return None if decided is None else _repeated(decided, str(req["approval_id"]))
        self.approvals_required.append(summary)
        self._stop = RunStop("escalated", f"waiting for approval {approval_id}: {summary}",
                             {"pending_approval": approval_id})
        raise self._stop


def recorded_halt(completed: Mapping[str, Any]) -> Halt | None:
    """The halt a recorded ``run.completed`` says stopped its run (its ``kill_switch``), or None."""
    evidence = (completed.get("result") or {}).get("kill_switch")
    if completed.get("outcome") != "cancelled" or not isinstance(evidence, Mapping):
        return None
    try:
        return Halt(str(evidence["scope"]), str(evidence["target"]), str(evidence["reason"]),
                    str(evidence["by"]), str(evidence["at"]), int(evidence["ledger_index"]))
    except (KeyError, TypeError, ValueError):
        return None  # not a halt's evidence: the replay goes on and the difference is reported


def _repeated(decided: Mapping[str, Any], recorded_approval_id: str) -> ApprovalDecision:
    return ApprovalDecision(str(decided["decision"]), str(decided["by"]), decided.get("reason"),
                            replayed_from=recorded_approval_id)


def _recorded_tool(d: Mapping[str, Any]) -> ToolAnswer:
    return ToolAnswer(d["status"], d.get("result"), d.get("error"), d["latency_ms"], d["side_effect"])


def _approvals(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    decided = {
        e["data"]["approval_id"]: e["data"] for e in events if e["type"] == "approval.decided"
    }
    return [
        (e["data"], decided.get(e["data"]["approval_id"]))
        for e in events
        if e["type"] == "approval.requested"
    ]
