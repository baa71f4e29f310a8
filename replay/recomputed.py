"""A stored replay's before/after figures, recomputed from the ledger through the analytics views.

The replay report computes them from the events in memory as it replays; the same events are
recorded in the ledger as the replay's runs (origin ``replay``, ``replay_id`` = the replay's id,
``domain/origins.py``), so the projection can give them back: "after" from those runs, "before"
from the runs they replay. Feedback is a person's verdict on the original run: as in the report,
it carries over to a replay run whose outcome and result are unchanged. Left out, as the ledger
does not say them: each run's status (reproduced, diverged...) and newly required approvals,
and latencies.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from domain.origins import OriginSelection
from projections.views import origin_condition
from replay.errors import ReplayError
from replay.report import RunFigures, RunResult, summarize

NOT_IN_THE_LEDGER = ("statuses", "approvals_now_required_runs", "not_replayable", "not_replayable_reasons",
                     "agent_version", "recorded_versions", "other_version_runs")
"""Summary figures the report has and the ledger does not (also each side's ``latency_ms``): the
replay's statuses, and how its runs were selected (which code, which recorded versions, which runs
it could not replay), which belong to the replay, not to its runs."""

# one run's facts, in the order ``_figures`` reads them
_FACTS = ("{a}.outcome, {a}.result_digest, {a}.priced_cost_usd, {a}.input_tokens + {a}.output_tokens, "
          "{a}.model_calls, {a}.tool_calls, {a}.denials, {a}.approvals_requested, {a}.accepted, "
          "{a}.unpriced_calls")
_N = _FACTS.count(",") + 1


def _figures(row: tuple[Any, ...], accepted: bool | None) -> RunFigures:
    outcome, digest, cost, tokens, calls, tools, denials, approvals, _accepted, unpriced = row
    return RunFigures(outcome, digest, Decimal(cost), int(tokens), Decimal(0), int(calls), int(tools),
                      int(denials), int(approvals), accepted, int(unpriced))


def replay_results(con: Any, replay_id: str) -> list[RunResult]:
    """Each run of replay ``replay_id`` (in recording order) beside the run it replays, from the
    projected ``run_facts`` (ReplayError if the replay has no runs or an original is missing)."""
    chosen = origin_condition(OriginSelection.parse(replay_id=replay_id), "r")
    rows = con.execute(f"""
        SELECT r.workspace, r.run_id, r.replay_of, o.run_id, {_FACTS.format(a="r")}, {_FACTS.format(a="o")}
        FROM run_facts r LEFT JOIN run_facts o ON o.workspace = r.workspace AND o.run_id = r.replay_of
        WHERE {chosen} ORDER BY r.first_idx""").fetchall()
    if not rows:
        raise ReplayError(f"the ledger holds no runs of replay {replay_id!r} (is the projection "
                          "current? `tacho project`)")
    results = []
    for ws, run_id, replay_of, found, *facts in rows:
        if found is None:
            raise ReplayError(f"replay run {run_id!r} replays {replay_of!r}, which is not in the "
                              f"projection of workspace {ws!r}")
        after_row, before_row = tuple(facts[:_N]), tuple(facts[_N:])
        before = _figures(before_row, before_row[8])
        unchanged = after_row[0] == before_row[0] and after_row[1] == before_row[1]
        after = _figures(after_row, before.accepted if unchanged else None)
        results.append(RunResult(replay_of, ws, run_id, "", before, after))
    return results


def recomputed_summary(con: Any, replay_id: str) -> dict[str, Any]:
    """The replay report's ``summary`` recomputed from the ledger's projection, without the
    figures the ledger does not hold (``NOT_IN_THE_LEDGER``, each side's ``latency_ms``)."""
    summary = summarize(replay_results(con, replay_id))
    return comparable(summary)


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """A replay summary without the figures the ledger does not hold."""
    out = {k: v for k, v in summary.items() if k not in NOT_IN_THE_LEDGER}
    for side in ("before", "after"):
        out[side] = {k: v for k, v in summary[side].items() if k != "latency_ms"}
    return out
