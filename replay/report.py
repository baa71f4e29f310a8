"""Replay results: per-run figures before/after, per-replay rates, the estimate and the gate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from replay.history import RecordedRun
from tachograph.builder import parse_time
from tachograph.contract.canonical import dumps
from tachograph.prices import PriceTable

RATE = Decimal("1e-6")


@dataclass(frozen=True)
class RunFigures:
    """What one run did, in numbers."""

    outcome: str | None
    result: Any
    cost_usd: Decimal
    tokens: int
    latency_ms: Decimal
    model_calls: int
    tool_calls: int
    denials: int
    approvals: int
    accepted: bool | None
    unpriced_calls: int = 0  # model calls with no known price: cost_usd is only the priced part

    @property
    def successful(self) -> bool:
        """Succeeded and not rejected by later feedback (the contract's successful outcome)."""
        return self.outcome == "succeeded" and self.accepted is not False

    def to_json(self) -> dict[str, Any]:
        """JSON form (money as exact decimal strings)."""
        return {
            "outcome": self.outcome, "result": self.result,
            "cost_usd": None if self.unpriced_calls else str(self.cost_usd),
            "unpriced_calls": self.unpriced_calls,
            "tokens": self.tokens, "latency_ms": str(self.latency_ms),
            "model_calls": self.model_calls, "tool_calls": self.tool_calls,
            "denials": self.denials, "approvals": self.approvals, "accepted": self.accepted,
        }


def figures(events: Sequence[Mapping[str, Any]], accepted: bool | None) -> RunFigures:
    """Figures of one run's events."""
    cost = Decimal(0)
    latency = Decimal(0)
    tokens = calls = tools = denials = approvals = unpriced = 0
    outcome: str | None = None
    result: Any = None
    for e in events:
        t, d = e["type"], e["data"]
        if t == "model.called":
            if d.get("priced") is False:  # cost unknown, not 0
                unpriced += 1
            else:
                cost += Decimal(str(d["cost_usd"]))
            tokens += int(d["input_tokens"]) + int(d["output_tokens"])
            latency += Decimal(str(d["latency_ms"]))
            calls += 1
        elif t == "tool.called":
            latency += Decimal(str(d["latency_ms"]))
            tools += 1
        elif t == "policy.evaluated" and d["decision"] == "deny":
            denials += 1
        elif t == "approval.requested":
            approvals += 1
        elif t == "run.completed":
            outcome = d["outcome"]
            result = d.get("result")
    return RunFigures(outcome, result, cost, tokens, latency, calls, tools, denials, approvals, accepted,
                      unpriced)


def feedback_of(run: RecordedRun) -> bool | None:
    """People's verdict on a recorded run: None without feedback, False if any feedback rejected
    it (the contract's successful outcome, as the analytics count it), else True."""
    if not run.feedback:
        return None
    return all(bool(f["data"]["accepted"]) for f in run.feedback)


@dataclass
class RunResult:
    """One replayed run: before and after, and where it first differed."""

    run_id: str
    workspace: str
    replay_run_id: str
    status: str  # reproduced | nondeterministic | unchanged | changed | diverged | stopped
    before: RunFigures
    after: RunFigures
    first_divergence: dict[str, Any] | None = None
    approvals_now_required: list[str] = field(default_factory=list)
    error: str | None = None
    recorded_version: str | None = None  # the agent version that recorded the run

    @property
    def changed(self) -> bool:
        """Whether the outcome or its result differ from the recording."""
        return self.before.outcome != self.after.outcome or dumps(self.before.result) != dumps(
            self.after.result
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "run_id": self.run_id, "workspace": self.workspace, "replay_run_id": self.replay_run_id,
            "status": self.status, "changed": self.changed, "before": self.before.to_json(),
            "after": self.after.to_json(), "first_divergence": self.first_divergence,
            "approvals_now_required": self.approvals_now_required, "error": self.error,
            "recorded_version": self.recorded_version,
        }


def _rate(n: int | Decimal, d: int | Decimal) -> Decimal | None:
    return (Decimal(n) / Decimal(d)).quantize(RATE) if d else None


def side_summary(figs: Sequence[RunFigures]) -> dict[str, Any]:
    """Rates and totals of one side (before or after) of a replay."""
    n = len(figs)
    successes = sum(1 for f in figs if f.successful)
    judged = [f for f in figs if f.accepted is not None]
    unpriced = sum(f.unpriced_calls for f in figs)
    cost = None if unpriced else sum((f.cost_usd for f in figs), Decimal(0))
    return {
        "runs": n,
        "successes": successes,
        "success_rate": _rate(successes, n),
        "acceptance_rate": _rate(sum(1 for f in judged if f.accepted), len(judged)),
        "cost_usd": cost,
        "cost_per_success": (cost / successes).quantize(Decimal("1e-9"))
        if successes and cost is not None else None,
        "unpriced_calls": unpriced,
        "unpriced_runs": sum(1 for f in figs if f.unpriced_calls),
        "violation_rate": _rate(sum(1 for f in figs if f.denials), n),
        "denials": sum(f.denials for f in figs),
        "approvals": sum(f.approvals for f in figs),
        "tokens": sum(f.tokens for f in figs),
        "latency_ms": sum((f.latency_ms for f in figs), Decimal(0)),
        "model_calls": sum(f.model_calls for f in figs),
    }


def _increase(before: Decimal | None, after: Decimal | None) -> Decimal | None:
    """Relative change of a cost; None when either side is unknown or the base is 0."""
    if before is None or after is None or not before:
        return None
    return ((after - before) / before).quantize(RATE)


def summarize(results: Sequence[RunResult]) -> dict[str, Any]:
    """Per-replay figures: change rate, before/after rates, changed runs."""
    before = side_summary([r.before for r in results])
    after = side_summary([r.after for r in results])
    changed = [r.run_id for r in results if r.changed]
    cost_increase = _increase(before["cost_usd"], after["cost_usd"])
    vb, va = before["violation_rate"], after["violation_rate"]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "runs": len(results),
        "outcome_change_rate": _rate(len(changed), len(results)),
        "changed_runs": changed,
        "statuses": dict(sorted(statuses.items())),
        "cost_increase": cost_increase,
        "violation_increase": (va - vb) if va is not None and vb is not None else None,
        "approvals_now_required_runs": sum(1 for r in results if r.approvals_now_required),
        "unpriced_calls": before["unpriced_calls"] + after["unpriced_calls"],
        "before": before,
        "after": after,
    }


STEP_ONLY = ("max_response_change", "max_tool_call_change")
"""Gate thresholds only a step replay measures (per model call)."""
FULL_ONLY = ("max_outcome_change", "max_violation_increase")
"""Gate thresholds only a full replay measures (per run: outcomes and policy decisions)."""


@dataclass(frozen=True)
class Gate:
    """Release-gate thresholds (rates as fractions: 0.05 = 5%).

    Full replays measure outcome change and violation increase, step replays response and
    tool-call change; both measure cost increase. :meth:`unmeasured` names the thresholds a
    kind of replay cannot judge, so they are refused rather than silently passed.
    """

    max_outcome_change: Decimal | None = None
    max_cost_increase: Decimal | None = None
    max_violation_increase: Decimal | None = None
    max_response_change: Decimal | None = None
    max_tool_call_change: Decimal | None = None

    def unmeasured(self, steps: bool) -> list[str]:
        """The thresholds set here that a step replay (``steps``) or a full replay cannot judge."""
        names = FULL_ONLY if steps else STEP_ONLY
        return [n for n in names if getattr(self, n) is not None]

    def failures(self, summary: Mapping[str, Any]) -> list[str]:
        """The thresholds a summary crosses, each as a sentence."""
        out: list[str] = []
        checks = (
            ("outcome change rate", summary.get("outcome_change_rate"), self.max_outcome_change),
            ("cost increase", summary.get("cost_increase"), self.max_cost_increase),
            ("violation rate increase", summary.get("violation_increase"), self.max_violation_increase),
            ("response change rate", summary.get("response_change_rate"), self.max_response_change),
            ("tool-call change rate", summary.get("tool_call_change_rate"), self.max_tool_call_change),
        )
        for what, value, limit in checks:
            if limit is not None and value is not None and Decimal(value) > limit:
                out.append(f"{what} {value} is over the limit {limit}")
        unpriced = int(summary.get("unpriced_calls") or 0)
        if self.max_cost_increase is not None and summary.get("cost_increase") is None and unpriced:
            out.append(f"cost increase is unknown: {unpriced} model call(s) had no known price "
                       "(price them in a price file, TACHO_PRICES)")
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "max_outcome_change": self.max_outcome_change,
            "max_cost_increase": self.max_cost_increase,
            "max_violation_increase": self.max_violation_increase,
            "max_response_change": self.max_response_change,
            "max_tool_call_change": self.max_tool_call_change,
        }


def estimate(runs: Sequence[RecordedRun], candidate_model: str | None, prices: PriceTable) -> dict[str, Any]:
    """Price a what-if replay from recorded token counts before spending anything.

    Each call is priced at its recorded time; a call with no known price (recorded unpriced, or
    a model the table does not know) makes that side's total unknown (None) and is counted.
    """
    before = after = Decimal(0)
    tin = tout = calls = unpriced_before = unpriced_after = 0
    for run in runs:
        for e in run.events:
            if e["type"] != "model.called":
                continue
            d = e["data"]
            calls += 1
            tin += int(d["input_tokens"])
            tout += int(d["output_tokens"])
            if d.get("priced") is False:
                unpriced_before += 1
            else:
                before += Decimal(str(d["cost_usd"]))
            cost = prices.cost_or_none(
                candidate_model or d["model"], int(d["input_tokens"]), int(d["output_tokens"]),
                None if candidate_model else d["provider"], at=parse_time(str(e["time"])))
            if cost is None:
                unpriced_after += 1
            else:
                after += cost
    known_before = None if unpriced_before else before
    known_after = None if unpriced_after else after
    return {
        "runs": len(runs),
        "model_calls": calls,
        "input_tokens": tin,
        "output_tokens": tout,
        "candidate_model": candidate_model,
        "cost_before_usd": known_before,
        "cost_estimated_usd": known_after,
        "cost_increase": _increase(known_before, known_after),
        "unpriced_calls_before": unpriced_before,
        "unpriced_calls_estimated": unpriced_after,
        "unpriced_calls": unpriced_before + unpriced_after,
    }
