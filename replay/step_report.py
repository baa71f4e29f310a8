"""Step replay results: one model call before and after, and the per-replay change rates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from replay.history import RecordedRun

RATE = Decimal("1e-6")


@dataclass(frozen=True)
class Changes:
    """How a candidate's answer differs from the recorded one (None: cannot tell)."""

    response: bool | None
    tool_choice: bool | None
    tool_args: bool | None


@dataclass
class CallResult:
    """One recorded model call sent again: replayed, unreplayable (and why) or an error."""

    run_id: str
    workspace: str
    seq: int
    call_id: str
    model: str  # the recorded model
    status: str  # replayed | unreplayable | error
    reason_kind: str | None = None
    reason: str | None = None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] | None = None
    changes: Changes | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form (money as exact decimals, None when unknown)."""
        c = self.changes
        return {
            "run_id": self.run_id, "workspace": self.workspace, "seq": self.seq, "call_id": self.call_id,
            "model": self.model, "status": self.status, "reason_kind": self.reason_kind,
            "reason": self.reason,
            "response_changed": None if c is None else c.response,
            "tool_choice_changed": None if c is None else c.tool_choice,
            "tool_args_changed": None if c is None else c.tool_args,
            "before": self.before, "after": self.after,
        }


def _rate(n: int, d: int) -> Decimal | None:
    return (Decimal(n) / Decimal(d)).quantize(RATE) if d else None


def _side(calls: Sequence[CallResult], which: str) -> dict[str, Any]:
    """Tokens and cost of one side (before or after) over the calls sent again."""
    sides = [getattr(c, which) or {} for c in calls]
    unpriced = sum(1 for s in sides if s.get("cost_usd") is None)
    total = sum((Decimal(str(s["cost_usd"])) for s in sides if s.get("cost_usd") is not None), Decimal(0))
    return {
        "model_calls": len(sides),
        "input_tokens": sum(int(s.get("input_tokens") or 0) for s in sides),
        "output_tokens": sum(int(s.get("output_tokens") or 0) for s in sides),
        "cost_usd": None if unpriced else total,
        "priced_cost_usd": total,
        "unpriced_calls": unpriced,
    }


def _increase(before: Decimal | None, after: Decimal | None) -> Decimal | None:
    if before is None or after is None or not before:
        return None
    return ((after - before) / before).quantize(RATE)


def summarize_steps(runs: Sequence[RecordedRun], results: Sequence[CallResult]) -> dict[str, Any]:
    """Per-replay figures: calls sent again and not (with reasons), change rates, tokens, cost.

    Rates are over the calls whose recorded answer could be compared (an error counts as a
    changed answer); cost and tokens are over the calls sent again, so before and after cover
    the same calls. A side's cost is unknown (None) when any of its calls had no price.
    """
    sent = [r for r in results if r.status != "unreplayable"]
    compared = [r for r in sent if r.changes is not None and r.changes.response is not None]
    reasons: dict[str, int] = {}
    for r in results:
        if r.status == "unreplayable":
            reasons[r.reason_kind or "unknown"] = reasons.get(r.reason_kind or "unknown", 0) + 1
    changed = sum(1 for r in compared if r.changes and r.changes.response)
    tools = sum(1 for r in compared if r.changes and (r.changes.tool_choice or r.changes.tool_args))
    choice = sum(1 for r in compared if r.changes and r.changes.tool_choice)
    before, after = _side(sent, "before"), _side(sent, "after")
    return {
        "runs": len(runs),
        "model_calls": len(results),
        "replayed_calls": len(sent),
        "compared_calls": len(compared),
        "errors": sum(1 for r in sent if r.status == "error"),
        "unreplayable_calls": len(results) - len(sent),
        "unreplayable_reasons": dict(sorted(reasons.items())),
        "responses_changed": changed,
        "response_change_rate": _rate(changed, len(compared)),
        "tool_calls_changed": tools,
        "tool_call_change_rate": _rate(tools, len(compared)),
        "tool_choices_changed": choice,
        "tool_choice_change_rate": _rate(choice, len(compared)),
        "cost_increase": _increase(before["cost_usd"], after["cost_usd"]),
        "unpriced_calls": before["unpriced_calls"] + after["unpriced_calls"],
        "outcome_change_rate": None,  # a step replay cannot see outcomes
        "before": before,
        "after": after,
    }
