"""The analytics views (SQL) over ``events`` and ``run_facts``; see docs/analytics.md.

Figures follow shared/EVENT_CONTRACT.md "Outcome figures": a successful outcome is a run that
succeeded with no rejecting feedback; cost per outcome is the total cost of every run in the
group (failed, escalated, cancelled and unfinished runs included) over its successful outcomes.
A model call recorded unpriced (``priced: false``) has an unknown cost (NULL), never 0: a run with
one has an unknown ``cost_usd``, and so has every money total of a group holding such a run; the
groups count their unpriced runs and calls and give ``priced_cost_usd``, the cost of the calls
whose price is known.
Money stays DECIMAL(38, 9); a division of money is rounded half-up to 9 places in integer
nano-dollars (DuckDB would otherwise divide decimals as binary floats).

Every figure counts production runs unless asked otherwise (an ``OriginSelection``): replays,
compensating runs and old audit runs are the platform's own (``domain/origins.py``). The views
named as before hold production runs; each ``<view>_all`` holds every run with its ``origin``.

OPA's decision-log runs (``run_facts.decision_log``, docs/decisions/0006) are production
decisions but no agent's runs: run figures (``runs``, cost per outcome, outcomes, budgets,
approvals) leave them out; violation rates count their decisions, but not as runs, and not a
decision the runtime recorded too in an agent's run (same workspace, decision id and decision):
that one counts once, in the agent's run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from domain.origins import ALL, DECISION_LOG_SOURCE, PRODUCTION, PRODUCTION_RUNS, OriginSelection
from projections.errors import ReportError
from projections.schema import origin_sql

MACROS = [
    # exact money / count, rounded half up to 9 decimal places; NULL when count is 0
    """CREATE OR REPLACE MACRO usd_div(total, n) AS CASE WHEN n = 0 THEN NULL ELSE
        CAST(((2 * CAST(total * 1000000000 AS HUGEINT) + n) // (2 * n)) // 1000000000
             AS DECIMAL(38, 9))
        + CAST(CAST(((2 * CAST(total * 1000000000 AS HUGEINT) + n) // (2 * n)) % 1000000000
                    AS DECIMAL(38, 0)) * CAST(0.000000001 AS DECIMAL(18, 9)) AS DECIMAL(38, 9))
        END""",
    "CREATE OR REPLACE MACRO ratio(a, b) AS CASE WHEN b = 0 THEN NULL ELSE a / b END",
]

# dimension name -> SQL expression over run_facts
RUN_DIMENSIONS = {
    "workspace": "workspace",
    "workflow": "workflow",
    "route": "route",
    "agent": "agent_id",
    "agent_version": "agent_version",
    "mode": "mode",
    "risk_tier": "risk_tier",
    "origin": "origin",
    "replay_id": "replay_id",
    "day": "CAST(started_at AS DATE)",
    "week": "CAST(date_trunc('week', started_at) AS DATE)",
}
PERIODS = ("day", "week")


def _dims(by: Sequence[str], allowed: dict[str, str], what: str) -> list[tuple[str, str]]:
    out = []
    for name in by:
        if name not in allowed:
            raise ReportError(
                f"{what} cannot be grouped by {name!r}; choose from {', '.join(allowed)}"
            )
        out.append((name, allowed[name]))
    return out


def _literal(text: str) -> str:
    """A SQL string literal (quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def origin_condition(runs: OriginSelection, alias: str = "") -> str | None:
    """SQL condition choosing the selected runs of ``run_facts`` (as ``alias``); None for all."""
    col = f"{alias}." if alias else ""
    conds = []
    if runs.origin != ALL:
        conds.append(f"{col}origin = {_literal(runs.origin)}")
    if runs.replay_id is not None:
        conds.append(f"{col}replay_id = {_literal(runs.replay_id)}")
    return " AND ".join(conds) or None


def _where(since: str | None, column: str, runs: OriginSelection = PRODUCTION_RUNS,
           alias: str = "", decision_logs: bool = False) -> str:
    """``WHERE`` keeping the selected runs that started (``column``) on or after ``since``; OPA's
    decision-log runs only with ``decision_logs``."""
    conds = [] if decision_logs else [f"NOT {alias + '.' if alias else ''}decision_log"]
    if since:
        try:
            day = date.fromisoformat(since)
        except ValueError as e:
            raise ReportError(f"--since must be a date like 2026-11-02, got {since!r}") from e
        conds.append(f"CAST({column} AS DATE) >= DATE '{day.isoformat()}'")
    if (chosen := origin_condition(runs, alias)) is not None:
        conds.append(chosen)
    return f"WHERE {' AND '.join(conds)}" if conds else ""


def _known(money: str, cost: str = "cost_usd", runs: str = "") -> str:
    """``money`` over a group's runs, or NULL when one of them has an unknown cost.

    ``cost`` is the runs' cost column (NULL exactly for a run with an unpriced call); ``runs`` an
    optional FILTER condition choosing the runs that count.
    """
    where = f" FILTER (WHERE {runs})" if runs else ""
    return f"CASE WHEN count({cost}){where} = count(*){where} THEN {money} END"


def cost_per_outcome_sql(
    by: Sequence[str], since: str | None = None, runs: OriginSelection = PRODUCTION_RUNS
) -> str:
    """Cost per successful outcome of the runs grouped by ``by`` (run start time for periods)."""
    dims = _dims(by, RUN_DIMENSIONS, "cost per outcome")
    select = ", ".join(f'{expr} AS "{name}"' for name, expr in dims)
    names = ", ".join(f'"{name}"' for name, _ in dims)
    return f"""
SELECT {select},
    count(*) AS runs,
    count(*) FILTER (WHERE successful) AS successful_outcomes,
    {_known("sum(cost_usd)")} AS total_cost_usd,
    usd_div({_known("sum(cost_usd)")}, count(*) FILTER (WHERE successful)) AS cost_per_outcome_usd,
    {_known("quantile_disc(cost_usd, 0.5)")} AS p50_cost_per_run_usd,
    {_known("quantile_disc(cost_usd, 0.95)")} AS p95_cost_per_run_usd,
    count(*) FILTER (WHERE unpriced_calls > 0) AS unpriced_runs,
    CAST(sum(unpriced_calls) AS BIGINT) AS unpriced_calls,
    sum(priced_cost_usd) AS priced_cost_usd
FROM run_facts {_where(since, "started_at", runs)}
GROUP BY {names} ORDER BY {names}"""


# policy.evaluated events OPA's decision log wrote (source ``opa``) that repeat a decision a
# production run recorded itself (the runtime, with OPA's decision id): same workspace, decision
# id and decision. Each counts once, in the agent's run; a record that disagrees with OPA's log
# on the decision is no repeat (both count: a run cannot hide a denial OPA logged).
DUPLICATE_DECISIONS = f"""
SELECT o.idx, o.workspace, o.run_id, o.decision
FROM events o
WHERE o.type = 'policy.evaluated' AND o.source_kind = '{DECISION_LOG_SOURCE}'
  AND o.decision_id IS NOT NULL AND EXISTS (
    SELECT 1 FROM events x JOIN events s
      ON s.workspace = x.workspace AND s.run_id = x.run_id AND s.type = 'run.started'
    WHERE x.type = 'policy.evaluated' AND x.workspace = o.workspace
      AND x.decision_id = o.decision_id AND x.decision = o.decision
      AND x.source_kind IS DISTINCT FROM '{DECISION_LOG_SOURCE}'
      AND {origin_sql("s.source_kind")} = '{PRODUCTION}')"""


def violation_rates_sql(
    by: Sequence[str], since: str | None = None, runs: OriginSelection = PRODUCTION_RUNS
) -> str:
    """Runs with a denial over runs, denials per 1,000 tool calls, approvals, by run dimensions.

    Decision-log runs add their decisions (less those an agent's run recorded too), not runs.
    """
    dims = _dims(by, RUN_DIMENSIONS, "violation rates")
    select = ", ".join(f'{expr} AS "{name}"' for name, expr in dims)
    names = ", ".join(f'"{name}"' for name, _ in dims)
    denials = "(r.denials - coalesce(d.denials, 0))"
    run = "NOT r.decision_log"
    where = _where(since, "started_at", runs, decision_logs=True)
    keep = "(NOT r.decision_log OR r.policy_evaluations > coalesce(d.evaluations, 0))"
    where = f"{where} AND {keep}" if where else f"WHERE {keep}"
    return f"""
WITH d AS (
    SELECT workspace, run_id, count(*) AS evaluations,
        count(*) FILTER (WHERE decision = 'deny') AS denials,
        count(*) FILTER (WHERE decision = 'require_approval') AS approvals_required
    FROM ({DUPLICATE_DECISIONS}) GROUP BY ALL
)
SELECT {select},
    count(*) FILTER (WHERE {run}) AS runs,
    count(*) FILTER (WHERE {run} AND {denials} > 0) AS runs_with_denial,
    ratio(count(*) FILTER (WHERE {run} AND {denials} > 0), count(*) FILTER (WHERE {run}))
        AS violation_rate,
    CAST(sum(r.tool_calls) AS BIGINT) AS tool_calls,
    CAST(sum({denials}) AS BIGINT) AS denials,
    ratio(1000 * sum({denials}) FILTER (WHERE {run}), sum(r.tool_calls))
        AS denials_per_1000_tool_calls,
    CAST(sum(r.approvals_required - coalesce(d.approvals_required, 0)) AS BIGINT)
        AS approvals_required,
    CAST(sum(r.approvals_requested) AS BIGINT) AS approvals_requested,
    CAST(sum(r.approvals_granted) AS BIGINT) AS approvals_granted,
    CAST(sum(r.approvals_rejected) AS BIGINT) AS approvals_rejected
FROM run_facts r LEFT JOIN d USING (workspace, run_id) {where}
GROUP BY {names} ORDER BY {names}"""


POLICY_DIMENSIONS = {
    "workspace": "p.workspace",
    "workflow": "r.workflow",
    "policy": "p.policy",
    "revision": "p.revision",
    "agent": "r.agent_id",
    "agent_version": "r.agent_version",
    "origin": "r.origin",
    "replay_id": "r.replay_id",
    "day": "CAST(r.started_at AS DATE)",
    "week": "CAST(date_trunc('week', r.started_at) AS DATE)",
}


def violation_rates_by_policy_sql(
    by: Sequence[str], since: str | None = None, runs: OriginSelection = PRODUCTION_RUNS
) -> str:
    """Per policy: evaluations, denials, runs that evaluated it and how many it denied.

    Every decision counts once (a decision OPA's log and an agent's run both recorded counts in
    the run); runs are agents' runs, not decision logs.
    """
    dims = _dims(by, POLICY_DIMENSIONS, "violation rates by policy")
    select = ", ".join(f'{expr} AS "{name}"' for name, expr in dims)
    names = ", ".join(f'"{name}"' for name, _ in dims)
    run = "NOT r.decision_log"
    return f"""
WITH p AS (
    SELECT e.workspace, e.run_id, e.policy{", e.revision" if "revision" in by else ""},
        count(*) AS evaluations,
        count(*) FILTER (WHERE e.decision = 'deny') AS denials,
        count(*) FILTER (WHERE e.decision = 'require_approval') AS approvals_required,
        count(*) FILTER (WHERE e.source_kind = '{DECISION_LOG_SOURCE}') AS logged
    FROM events e ANTI JOIN ({DUPLICATE_DECISIONS}) dup ON dup.idx = e.idx
    WHERE e.type = 'policy.evaluated' GROUP BY ALL
)
SELECT {select},
    count(*) FILTER (WHERE {run}) AS runs,
    count(*) FILTER (WHERE {run} AND p.denials > 0) AS runs_with_denial,
    ratio(count(*) FILTER (WHERE {run} AND p.denials > 0), count(*) FILTER (WHERE {run}))
        AS violation_rate,
    CAST(sum(p.evaluations) AS BIGINT) AS evaluations,
    CAST(sum(p.denials) AS BIGINT) AS denials,
    CAST(sum(r.tool_calls) AS BIGINT) AS tool_calls,
    ratio(1000 * sum(p.denials) FILTER (WHERE {run}), sum(r.tool_calls))
        AS denials_per_1000_tool_calls,
    CAST(sum(p.approvals_required) AS BIGINT) AS approvals_required,
    CAST(sum(p.logged) AS BIGINT) AS decision_log_evaluations
FROM p JOIN run_facts r USING (workspace, run_id)
{_where(since, "r.started_at", runs, "r", decision_logs=True)}
GROUP BY {names} ORDER BY {names}"""


# one row per approval request with its decision, of runs of every origin
APPROVAL_REQUESTS = """SELECT q.workspace, q.run_id, q.approval_id, q.risk, q.change_id,
        q.summary, q.time AS requested_at, d.time AS decided_at, d.decision, d."by" AS decided_by,
        epoch_ms(d.time) - epoch_ms(q.time) AS latency_ms
        FROM events q LEFT JOIN events d
          ON d.type = 'approval.decided' AND d.workspace = q.workspace
         AND d.run_id = q.run_id AND d.approval_id = q.approval_id
        WHERE q.type = 'approval.requested'"""

APPROVAL_DIMENSIONS = {
    "workspace": "a.workspace",
    "workflow": "r.workflow",
    "risk": "a.risk",
    "agent": "r.agent_id",
    "agent_version": "r.agent_version",
    "decided_by": "a.decided_by",
    "origin": "r.origin",
    "replay_id": "r.replay_id",
    "day": "CAST(a.requested_at AS DATE)",
    "week": "CAST(date_trunc('week', a.requested_at) AS DATE)",
}


def approval_latency_sql(
    by: Sequence[str], since: str | None = None, runs: OriginSelection = PRODUCTION_RUNS
) -> str:
    """Approval requests and decisions with p50/p95 latency (ms) from request to decision."""
    dims = _dims(by, APPROVAL_DIMENSIONS, "approval latency")
    select = ", ".join(f'{expr} AS "{name}"' for name, expr in dims)
    names = ", ".join(f'"{name}"' for name, _ in dims)
    return f"""
SELECT {select},
    count(*) AS requested,
    count(a.decided_at) AS decided,
    count(*) FILTER (WHERE a.decided_at IS NULL) AS pending,
    count(*) FILTER (WHERE a.decision = 'approved') AS granted,
    count(*) FILTER (WHERE a.decision = 'rejected') AS rejected,
    quantile_disc(a.latency_ms, 0.5) AS p50_latency_ms,
    quantile_disc(a.latency_ms, 0.95) AS p95_latency_ms,
    max(a.latency_ms) AS max_latency_ms
FROM ({APPROVAL_REQUESTS}) a JOIN run_facts r USING (workspace, run_id)
{_where(since, "a.requested_at", runs, "r")}
GROUP BY {names} ORDER BY {names}"""


BUDGET_DIMENSIONS = {
    "workspace": "r.workspace",
    "workflow": "r.workflow",
    "limit": "b.budget_limit",
    "agent": "r.agent_id",
    "agent_version": "r.agent_version",
    "route": "r.route",
    "origin": "r.origin",
    "replay_id": "r.replay_id",
    "day": "CAST(r.started_at AS DATE)",
    "week": "CAST(date_trunc('week', r.started_at) AS DATE)",
}


def budget_summary_sql(
    by: Sequence[str], since: str | None = None, runs: OriginSelection = PRODUCTION_RUNS
) -> str:
    """Budget breaches per group: breaches, runs breached over runs, cost of breached runs."""
    dims = _dims(by, BUDGET_DIMENSIONS, "budget breaches")
    select = ", ".join(f'{expr} AS "{name}"' for name, expr in dims)
    names = ", ".join(f'"{name}"' for name, _ in dims)
    if "limit" in by:
        # breaches per limit: the runs are those that breached that limit
        source = """run_facts r JOIN (SELECT workspace, run_id, budget_limit, count(*) AS n
            FROM events WHERE type = 'budget.exceeded' GROUP BY ALL) b USING (workspace, run_id)"""
        figures = f"""CAST(sum(b.n) AS BIGINT) AS breaches, count(*) AS runs_breached,
    {_known("sum(r.cost_usd)", "r.cost_usd")} AS cost_of_breached_runs_usd"""
    else:
        source = "run_facts r"
        breached = "coalesce(sum(r.cost_usd) FILTER (WHERE r.budget_breaches > 0), 0)::DECIMAL(38, 9)"
        figures = f"""CAST(sum(r.budget_breaches) AS BIGINT) AS breaches,
    count(*) FILTER (WHERE r.budget_breaches > 0) AS runs_breached,
    count(*) AS runs,
    ratio(count(*) FILTER (WHERE r.budget_breaches > 0), count(*)) AS breach_rate,
    {_known(breached, "r.cost_usd", "r.budget_breaches > 0")} AS cost_of_breached_runs_usd"""
    return f"""
SELECT {select}, {figures}
FROM {source} {_where(since, "r.started_at", runs, "r")}
GROUP BY {names} ORDER BY {names}"""


def outcome_slo_sql(
    by: Sequence[str], since: str | None = None, runs: OriginSelection = PRODUCTION_RUNS
) -> str:
    """Success rate, acceptance rate and time to human correction by run dimensions."""
    dims = _dims(by, RUN_DIMENSIONS, "outcome SLO")
    select = ", ".join(f'{expr} AS "{name}"' for name, expr in dims)
    names = ", ".join(f'"{name}"' for name, _ in dims)
    return f"""
SELECT {select},
    count(*) AS runs,
    count(outcome) AS completed,
    count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
    count(*) FILTER (WHERE outcome = 'failed') AS failed,
    count(*) FILTER (WHERE outcome = 'escalated') AS escalated,
    count(*) FILTER (WHERE outcome = 'cancelled') AS cancelled,
    count(*) FILTER (WHERE successful) AS successful_outcomes,
    ratio(count(*) FILTER (WHERE outcome = 'succeeded'), count(outcome)) AS success_rate,
    count(accepted) AS runs_with_feedback,
    count(*) FILTER (WHERE accepted) AS accepted_runs,
    ratio(count(*) FILTER (WHERE accepted), count(accepted)) AS acceptance_rate,
    count(corrected_at) AS corrected_runs,
    quantile_disc(time_to_correction_ms, 0.5) AS p50_time_to_correction_ms,
    quantile_disc(time_to_correction_ms, 0.95) AS p95_time_to_correction_ms
FROM run_facts {_where(since, "started_at", runs)}
GROUP BY {names} ORDER BY {names}"""


_EVENT_COLUMNS = "idx, workspace, date, run_id, seq, event_id, time, agent_id, agent_version, trace_id"

EVENT_GRAIN = {
    "model_calls": f"""SELECT {_EVENT_COLUMNS}, call_id, provider, model,
        provider || '/' || model AS model_route, input_tokens, output_tokens, cost_usd, priced,
        latency_ms, confidence, finish_reason
        FROM events WHERE type = 'model.called'""",
    "tool_calls": f"""SELECT {_EVENT_COLUMNS}, call_id, tool, status, side_effect, error,
        latency_ms FROM events WHERE type = 'tool.called'""",
    "policy_evaluations": f"""SELECT {_EVENT_COLUMNS}, policy, action, decision, reason,
        risk_score FROM events WHERE type = 'policy.evaluated'""",
    "approvals": f"""SELECT {_EVENT_COLUMNS},
        CASE type WHEN 'approval.requested' THEN 'requested' ELSE 'decided' END AS kind,
        approval_id, summary, risk, change_id, decision, "by", reason
        FROM events WHERE type IN ('approval.requested', 'approval.decided')""",
    "changes": f"""SELECT {_EVENT_COLUMNS}, substr(type, 8) AS kind, change_id, target,
        reversible, "by", reason
        FROM events WHERE type IN ('change.proposed', 'change.applied', 'change.reverted')""",
    "budget_breaches": """SELECT e.idx, e.workspace, e.date, e.run_id, e.seq, e.event_id,
        e.time, e.agent_id, e.agent_version, e.trace_id, r.workflow, r.route,
        e.budget_limit AS "limit", e.limit_value, e.observed, r.outcome, r.cost_usd AS run_cost_usd
        FROM events e JOIN run_facts r USING (workspace, run_id)
        WHERE e.type = 'budget.exceeded'""",
}


def with_origin(sql: str) -> str:
    """Rows of ``sql`` (each of one run) with their run's ``origin`` and ``replay_id``."""
    return f"""SELECT b.*, o.origin, o.replay_id FROM ({sql}) b
        JOIN run_facts o USING (workspace, run_id)"""


def _production(name: str) -> str:
    if name == "runs":  # agents' runs: OPA's decision logs are in runs_all (decision_log)
        return f"SELECT * FROM runs_all WHERE origin = '{PRODUCTION}' AND NOT decision_log"
    return f"SELECT * FROM {name}_all WHERE origin = '{PRODUCTION}'"


# the views of every run (``<name>_all``) and the production views over them (``<name>``)
ALL_VIEWS = {
    "runs_all": "SELECT * EXCLUDE (first_idx, last_idx) FROM run_facts",
    "approval_requests_all": with_origin(APPROVAL_REQUESTS),
    **{f"{name}_all": with_origin(sql) for name, sql in EVENT_GRAIN.items()},
}

AGGREGATE_VIEWS = {
    "cost_per_outcome": cost_per_outcome_sql(["workspace", "workflow", "day"]),
    "cost_per_outcome_weekly": cost_per_outcome_sql(["workspace", "workflow", "week"]),
    "cost_per_outcome_by_route": cost_per_outcome_sql(["workspace", "workflow", "route"]),
    "cost_per_outcome_by_agent_version": cost_per_outcome_sql(
        ["workspace", "workflow", "agent", "agent_version"]
    ),
    "violation_rates": violation_rates_sql(["workspace", "workflow", "agent", "agent_version"]),
    "violation_rates_by_policy": violation_rates_by_policy_sql(
        ["workspace", "workflow", "policy"]
    ),
    "approval_latency": approval_latency_sql(["workspace", "workflow", "risk"]),
    "outcome_slo": outcome_slo_sql(["workspace", "workflow"]),
}

PRODUCTION_VIEWS = {name.removesuffix("_all"): _production(name.removesuffix("_all"))
                    for name in ALL_VIEWS}

VIEW_NAMES = tuple(PRODUCTION_VIEWS) + tuple(ALL_VIEWS) + tuple(AGGREGATE_VIEWS)


def view_ddl() -> list[str]:
    """Statements creating the macros and every view (idempotent)."""
    out = list(MACROS)
    for views in (ALL_VIEWS, PRODUCTION_VIEWS, AGGREGATE_VIEWS):
        out.extend(f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, sql in views.items())
    return out
