"""What-if policy replay: ask a candidate policy about every recorded tool call and change.

For each finished production run, each recorded ``tool.called`` and ``change.applied`` is turned
back into the input document the runtime sent OPA at that point
(:func:`tachograph.policy.policy_input`: the run's workspace, workflow, agent, mode, risk tier
and budget from ``run.started``; the tool's arguments and side effect, or the change's target;
the budget used so far recomputed from the ``model.called`` events before it). The candidate's
answer is compared with what was recorded: the runtime's ``policy.evaluated`` for that action
(the last one naming it since the previous action), or ``allow`` when the run recorded none.

Actions the recorded policy blocked (denied, or an approval not granted) never happened; the
runtime records their arguments in the ``policy.evaluated`` that blocked them, so they are
re-asked too, from that event: the budget used at that point, a change's proposal (when the
arguments are the change proposed in the run) or a tool's side effect as the run, or another
selected run of the workspace, recorded it for that tool. A blocked action without recorded
arguments (runs recorded before the runtime kept them, decisions agent code recorded itself) or
whose tool never ran anywhere in the selection (its side effect is unknown) is counted as
``not_reevaluated``, with the reason, not judged.

Gate thresholds are a count (``3``: at most 3 actions) or a rate of the re-evaluated actions
(``5%`` or ``0.05``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from replay.errors import PolicyReplayError
from replay.history import PRODUCTION, RecordedRun
from tachograph.contract.canonical import dumps
from tachograph.policy import PolicyDecision, policy_input

Decide = Callable[[Mapping[str, Any]], PolicyDecision]
CHANGES = ("new_denials", "new_approvals", "new_allows", "unchanged")
_COUNT = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class RecordedAction:
    """One recorded tool call or applied change, with the input OPA was (or would be) asked.

    ``ran`` is False for an action the recorded policy blocked (asked from the arguments its
    ``policy.evaluated`` recorded; ``seq`` is that event's).
    """

    seq: int
    kind: str
    name: str
    input: dict[str, Any]
    recorded: str
    recorded_revision: str | None = None
    ran: bool = True


@dataclass
class RunActions:
    """A run's re-evaluable actions, and the recorded decisions whose action never happened."""

    actions: list[RecordedAction] = field(default_factory=list)
    blocked: list[dict[str, Any]] = field(default_factory=list)


def _dec(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def tool_side_effects(runs: Sequence[RecordedRun]) -> dict[tuple[str, str], str]:
    """The side effect each tool's calls recorded, by (workspace, tool), over ``runs``."""
    out: dict[tuple[str, str], str] = {}
    for run in runs:
        for e in run.events:
            if e["type"] == "tool.called":
                out.setdefault((run.workspace, str(e["data"]["tool"])),
                               str(e["data"].get("side_effect", "none")))
    return out


def run_actions(run: RecordedRun, side_effects: Mapping[tuple[str, str], str] | None = None) -> RunActions:
    """The tool calls and changes of a recorded run, each with the policy input of that moment,
    and the actions its recorded policy blocked.

    ``side_effects``: tools' side effects known from other runs (:func:`tool_side_effects`), for
    a blocked tool call whose tool never ran in this run.
    """
    started = run.started
    first = run.events[0]
    base: dict[str, Any] = {
        "workspace": run.workspace, "workflow": str(started.get("workflow", "")),
        "run_id": run.run_id, "agent": dict(first.get("agent") or {}),
        "mode": str(started.get("mode", "execute")), "risk_tier": str(started.get("risk_tier", "low")),
        "limits": dict(started.get("budget") or {}),
    }
    known = {**(side_effects or {}), **tool_side_effects([run])}
    out = RunActions()
    used: dict[str, Any] = {"model_calls": 0, "tokens": 0, "cost_usd": Decimal(0)}
    pending: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (policy.evaluated, used then)
    proposed: dict[str, dict[str, Any]] = {}

    def settle(ran: str | None) -> None:
        """Count the pending decisions that stopped an action: not those naming the action that
        then ran (it was not stopped: e.g. a decision agent code recorded before OPA's allow)."""
        for event, used_then in pending:
            data = event["data"]
            if (ran is not None and data.get("action") == ran) or \
                    data.get("decision") not in ("deny", "require_approval"):
                continue
            blocked = _blocked_action(run.workspace, event, used_then, base, proposed, known)
            if isinstance(blocked, RecordedAction):
                out.actions.append(blocked)
            else:
                out.blocked.append(blocked)

    for e in run.events:
        etype, data = e["type"], e["data"]
        if etype == "model.called":
            used["model_calls"] += 1
            used["tokens"] += int(data["input_tokens"]) + int(data["output_tokens"])
            if data.get("priced", True) is not False:
                used["cost_usd"] += _dec(data["cost_usd"])
        elif etype == "policy.evaluated":
            pending.append((e, dict(used)))
        elif etype == "change.proposed":
            proposed[data["change_id"]] = data
        elif etype in ("tool.called", "change.applied"):
            if etype == "tool.called":
                kind, name, args = "tool", data["tool"], data.get("args") or {}
                side_effect = str(data.get("side_effect", "none"))
            else:
                change = proposed.get(data["change_id"])
                kind, name = "change", str(change["target"]) if change else ""
                args = change if change is not None else {"change_id": data["change_id"]}
                side_effect = "write"
            recorded = _matching([p["data"] for p, _ in pending], name)
            settle(name)
            pending = []
            asked = policy_input(kind=kind, name=name, arguments=args, side_effect=side_effect,
                                 used=dict(used), **base)
            out.actions.append(RecordedAction(
                e["seq"], kind, name, asked, recorded["decision"] if recorded else "allow",
                recorded.get("revision") if recorded else None))
    settle(None)
    out.actions.sort(key=lambda a: a.seq)
    return out


def _matching(pending: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = None
    for data in pending:
        if data.get("action") == name:
            found = data  # the last one naming the action
    return found


def _blocked_action(
    workspace: str, event: Mapping[str, Any], used: dict[str, Any], base: Mapping[str, Any],
    proposed: Mapping[str, Mapping[str, Any]], side_effects: Mapping[tuple[str, str], str],
) -> RecordedAction | dict[str, Any]:
    """A recorded decision that stopped its action (deny, or an approval not granted): the
    action asked again from the arguments it recorded, or, when it cannot be, why not."""
    data = event["data"]
    name, arguments = str(data.get("action")), data.get("arguments")
    shown = {"seq": event["seq"], "action": data.get("action"), "decision": data.get("decision")}
    if not isinstance(arguments, Mapping):
        return {**shown, "why": "no arguments recorded (a run recorded before the runtime kept "
                "them, or a decision agent code recorded itself)"}
    change = proposed.get(str(arguments.get("change_id")))
    if change is not None and change.get("target") == name and dumps(change) == dumps(arguments):
        kind, side_effect = "change", "write"
    elif (side_effect_found := side_effects.get((workspace, name))) is not None:
        kind, side_effect = "tool", side_effect_found
    else:
        return {**shown, "why": f"the side effect of tool {name!r} is unknown: it never ran in "
                "the selected runs of the workspace"}
    asked = policy_input(kind=kind, name=name, arguments=arguments, side_effect=side_effect,
                         used=used, **base)
    return RecordedAction(int(event["seq"]), kind, name, asked, str(data["decision"]),
                          data.get("revision"), ran=False)


def classify(before: str, after: str) -> str:
    """How the candidate's decision differs from the recorded one (one of :data:`CHANGES`)."""
    if before == after:
        return "unchanged"
    return {"deny": "new_denials", "require_approval": "new_approvals", "allow": "new_allows"}[after]


@dataclass(frozen=True)
class Threshold:
    """A gate limit: a count of actions, or a rate of the re-evaluated actions."""

    count: int | None = None
    rate: Decimal | None = None

    @classmethod
    def parse(cls, text: str, option: str) -> Threshold:
        """``N`` (digits: a count), ``R%`` or a fraction ``0.05`` (a rate); else a named error."""
        text = text.strip()
        if _COUNT.match(text):
            return cls(count=int(text))
        try:
            rate = Decimal(text[:-1]) / 100 if text.endswith("%") else Decimal(text)
        except InvalidOperation:
            rate = None
        if rate is None or not rate.is_finite() or not (0 <= rate <= 1) or (
                not text.endswith("%") and "." not in text):
            raise PolicyReplayError(
                f"{option} must be a count (e.g. 0 or 3) or a rate (e.g. 5% or 0.05), not {text!r}")
        return cls(rate=rate)

    def crossed(self, count: int, evaluated: int) -> bool:
        """Whether ``count`` of ``evaluated`` actions is over this limit."""
        if self.count is not None:
            return count > self.count
        assert self.rate is not None
        return evaluated > 0 and Decimal(count) / evaluated > self.rate

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        assert self.rate is not None
        return f"{(self.rate * 100).normalize():f}%"


@dataclass(frozen=True)
class PolicyGate:
    """``--max-new-denials`` and ``--max-new-approvals``."""

    max_new_denials: Threshold | None = None
    max_new_approvals: Threshold | None = None

    def failures(self, totals: Mapping[str, Any]) -> list[str]:
        """The limits the totals cross, each as a sentence."""
        out: list[str] = []
        evaluated = int(totals["evaluated"])
        for what, key, limit in (("new denials", "new_denials", self.max_new_denials),
                                 ("actions newly needing approval", "new_approvals", self.max_new_approvals)):
            n = int(totals[key])
            if limit is not None and limit.crossed(n, evaluated):
                out.append(f"{what}: {n} of {evaluated} actions ({_rate(n, evaluated)}) is over the limit {limit}")
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON form (limits as written: a count or a rate)."""
        return {"max_new_denials": _threshold_json(self.max_new_denials),
                "max_new_approvals": _threshold_json(self.max_new_approvals)}


def _threshold_json(t: Threshold | None) -> dict[str, Any] | None:
    return None if t is None else {"count": t.count, "rate": t.rate}


def _rate(n: int, total: int) -> Decimal | None:
    return None if total == 0 else (Decimal(n) / total).quantize(Decimal("0.0001"))


def _figures(counts: Mapping[str, int], evaluated: int, blocked: int) -> dict[str, Any]:
    out: dict[str, Any] = {"evaluated": evaluated, "not_reevaluated": blocked, **counts}
    for key in CHANGES:
        out[f"{key}_rate"] = _rate(counts[key], evaluated)
    return out


def what_if_policy(
    runs: Sequence[RecordedRun],
    decide: Decide,
    *,
    replay_id: str,
    created: str,
    candidate: str,
    gate: PolicyGate,
) -> dict[str, Any]:
    """The what-if report of ``runs`` (production ones; others are listed as skipped) against
    the candidate policy ``decide`` asks."""
    per_run: list[dict[str, Any]] = []
    totals = dict.fromkeys(CHANGES, 0)
    evaluated = blocked = 0
    revisions: set[str] = set()
    skipped = [r.run_id for r in runs if r.origin != PRODUCTION]
    production = [r for r in runs if r.origin == PRODUCTION]
    side_effects = tool_side_effects(production)
    for run in production:
        found = run_actions(run, side_effects)
        counts = dict.fromkeys(CHANGES, 0)
        changed: list[dict[str, Any]] = []
        for action in found.actions:
            answer = decide(action.input)
            if answer.revision:
                revisions.add(answer.revision)
            change = classify(action.recorded, answer.result)
            counts[change] += 1
            if change != "unchanged":
                changed.append({"seq": action.seq, "kind": action.kind, "name": action.name,
                                "arguments": action.input["arguments"], "before": action.recorded,
                                "after": answer.result, "reason": answer.reason,
                                "ran": action.ran})
        for key in CHANGES:
            totals[key] += counts[key]
        evaluated += len(found.actions)
        blocked += len(found.blocked)
        per_run.append({"run_id": run.run_id, "workspace": run.workspace,
                        "workflow": run.started.get("workflow"),
                        **_figures(counts, len(found.actions), len(found.blocked)),
                        "changed": changed, "not_reevaluated_actions": found.blocked})
    summary = {"runs": len(per_run), **_figures(totals, evaluated, blocked),
               "outcome_change_rate": None, "candidate_revisions": sorted(revisions)}
    failures = gate.failures(summary)
    return {"replay_id": replay_id, "created": created, "mode": "policy", "agent": "—",
            "candidate": candidate, "summary": summary, "runs": per_run, "skipped_runs": skipped,
            "gate": {"passed": not failures, "failures": failures, **gate.to_json()}}
