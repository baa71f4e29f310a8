"""DDL of the analytics database: the event table, the run table and the projector state (its
position is eventsourcing's tracking row: ``projections/duckdb_tracking.py``)."""

from __future__ import annotations

import pyarrow as pa

from domain.origins import (
    DECISION_LOG_SOURCE,
    PLATFORM_SOURCES,
    PRODUCTION,
    REPLAY,
    REPLAY_ID_LABEL,
)

SCHEMA_VERSION = "9"
PREVIOUS_SCHEMA_VERSION = "8"
"""Schema 8 differs only in keeping the position in ``projection_state``: it is migrated."""

MONEY = "DECIMAL(38, 9)"

# Columns of ``events`` in order, by the Arrow type of the value DuckDB extracts from the
# entry JSON (projections.transform); times are cast to TIMESTAMPTZ and money to exact DECIMAL.
STAGE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("idx", pa.int64()),
    ("workspace", pa.string()),
    ("run_id", pa.string()),
    ("seq", pa.int64()),
    ("event_id", pa.string()),
    ("type", pa.string()),
    ("time", pa.string()),
    ("agent_id", pa.string()),
    ("agent_version", pa.string()),
    ("trace_id", pa.string()),
    ("source_kind", pa.string()),  # the entry's source kind: kafka, http, otlp, replay, console...
    # run.started
    ("workflow", pa.string()),
    ("mode", pa.string()),
    ("risk_tier", pa.string()),
    ("replay_of", pa.string()),
    ("route_label", pa.string()),
    ("labels", pa.string()),
    ("budget_max_model_calls", pa.int64()),
    ("budget_max_tokens", pa.int64()),
    ("budget_max_cost_usd", pa.string()),
    ("budget_deadline_s", pa.float64()),
    # model.called / tool.called
    ("call_id", pa.string()),
    ("provider", pa.string()),
    ("model", pa.string()),
    ("input_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("cost_usd", pa.string()),  # NULL for a call recorded unpriced (no price was known)
    ("priced", pa.bool_()),  # model.called: false when no price was known, else true
    ("latency_ms", pa.float64()),
    ("confidence", pa.float64()),
    ("finish_reason", pa.string()),
    ("tool", pa.string()),
    ("status", pa.string()),
    ("side_effect", pa.string()),
    ("error", pa.string()),
    # policy.evaluated / approvals / changes
    ("policy", pa.string()),
    ("action", pa.string()),
    ("decision", pa.string()),
    ("reason", pa.string()),
    ("risk_score", pa.float64()),
    ("revision", pa.string()),  # the policy revision that decided (policy.evaluated)
    ("decision_id", pa.string()),  # the policy engine's id of that decision
    ("approval_id", pa.string()),
    ("summary", pa.string()),
    ("risk", pa.string()),
    ("change_id", pa.string()),
    ("by", pa.string()),
    ("target", pa.string()),
    ("reversible", pa.bool_()),
    # budget.exceeded / run.completed / feedback.recorded
    ("budget_limit", pa.string()),
    ("limit_value", pa.string()),
    ("observed", pa.string()),
    ("outcome", pa.string()),
    ("result_digest", pa.string()),  # run.completed: MD5 of its result as DuckDB writes the JSON
    ("accepted", pa.bool_()),
    ("comment", pa.string()),
]
_MONEY_COLUMNS = ("budget_max_cost_usd", "cost_usd", "limit_value", "observed")


def _sql_type(name: str, dtype: pa.DataType) -> str:
    if name == "time":
        return "TIMESTAMPTZ"
    if name in _MONEY_COLUMNS:
        return MONEY
    return {
        pa.int64(): "BIGINT",
        pa.string(): "VARCHAR",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
    }[dtype]


def events_ddl() -> str:
    """CREATE TABLE of the event-grain table (one row per ledger event, all types)."""
    cols = []
    for name, dtype in STAGE_COLUMNS:
        cols.append(f'"{name}" {_sql_type(name, dtype)}')
        if name == "time":
            cols.append("date DATE")
    return f"CREATE TABLE events ({', '.join(cols)})"


STATE_DDL = """
CREATE TABLE projection_state (
    name VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
)
"""

RUN_FACTS_DDL = f"""
CREATE TABLE run_facts (
    workspace VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    workflow VARCHAR,
    agent_id VARCHAR,
    agent_version VARCHAR,
    mode VARCHAR,
    risk_tier VARCHAR,
    replay_of VARCHAR,
    origin VARCHAR NOT NULL,
    replay_id VARCHAR,
    decision_log BOOLEAN NOT NULL,
    models VARCHAR[],
    route VARCHAR,
    started_at TIMESTAMPTZ,
    ended_at TIMESTAMPTZ,
    duration_ms BIGINT,
    outcome VARCHAR,
    result_digest VARCHAR,
    accepted BOOLEAN,
    successful BOOLEAN NOT NULL,
    corrected_at TIMESTAMPTZ,
    time_to_correction_ms BIGINT,
    model_calls BIGINT NOT NULL,
    unpriced_calls BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd {MONEY},
    priced_cost_usd {MONEY} NOT NULL,
    tool_calls BIGINT NOT NULL,
    tool_errors BIGINT NOT NULL,
    policy_evaluations BIGINT NOT NULL,
    denials BIGINT NOT NULL,
    approvals_required BIGINT NOT NULL,
    approvals_requested BIGINT NOT NULL,
    approvals_granted BIGINT NOT NULL,
    approvals_rejected BIGINT NOT NULL,
    approval_wait_ms BIGINT,
    approval_latency_max_ms BIGINT,
    changes_proposed BIGINT NOT NULL,
    changes_applied BIGINT NOT NULL,
    changes_reverted BIGINT NOT NULL,
    budget_breaches BIGINT NOT NULL,
    events BIGINT NOT NULL,
    first_idx BIGINT NOT NULL,
    last_idx BIGINT NOT NULL
)
"""


def origin_sql(source_kind: str) -> str:
    """SQL of a run's origin from its ``run.started`` entry's source kind: the rule of
    ``domain.origins.run_origin``, written out from the same table of platform sources."""
    cases = " ".join(
        f"WHEN '{kind}' THEN '{origin}'" for kind, origin in sorted(PLATFORM_SOURCES.items())
    )
    return f"CASE {source_kind} {cases} ELSE '{PRODUCTION}' END"


def decision_log_sql(source_kind: str) -> str:
    """SQL aggregate over a run's entries' source kinds: whether the run is OPA's decision log
    (``domain.origins.DECISION_LOG_SOURCE``). Every entry must have come from it: a run others
    appended to is counted as a run, so nobody can hide a run's figures in a decision log."""
    return f"coalesce(bool_and(coalesce({source_kind} = '{DECISION_LOG_SOURCE}', false)), false)"


# One run's facts, recomputed from all of its events whenever a batch touches the run; ``low``
# is the first ledger index of any touched run, so the scan skips older row groups.
RUN_FACTS_SELECT = f"""
WITH ev AS (
    SELECT e.* FROM events e SEMI JOIN {{touched}} t
    ON e.workspace = t.workspace AND e.run_id = t.run_id
    WHERE e.idx >= {{low}}
),
ap AS (
    SELECT r.workspace, r.run_id,
           sum(epoch_ms(d.time) - epoch_ms(r.time)) AS wait_ms,
           max(epoch_ms(d.time) - epoch_ms(r.time)) AS max_ms
    FROM ev r JOIN ev d
      ON d.workspace = r.workspace AND d.run_id = r.run_id AND d.approval_id = r.approval_id
     AND r.type = 'approval.requested' AND d.type = 'approval.decided'
    GROUP BY ALL
),
agg AS (
    SELECT workspace, run_id,
        any_value(workflow) FILTER (WHERE type = 'run.started') AS workflow,
        any_value(agent_id) FILTER (WHERE type = 'run.started') AS agent_id,
        any_value(agent_version) FILTER (WHERE type = 'run.started') AS agent_version,
        any_value(mode) FILTER (WHERE type = 'run.started') AS mode,
        any_value(risk_tier) FILTER (WHERE type = 'run.started') AS risk_tier,
        any_value(replay_of) FILTER (WHERE type = 'run.started') AS replay_of,
        any_value(route_label) FILTER (WHERE type = 'run.started') AS route_label,
        {origin_sql("any_value(source_kind) FILTER (WHERE type = 'run.started')")} AS origin,
        any_value(json_extract_string(labels, '$."{REPLAY_ID_LABEL}"'))
            FILTER (WHERE type = 'run.started') AS replay_label,
        {decision_log_sql("source_kind")} AS decision_log,
        coalesce(list_sort(list_distinct(list(provider || '/' || model)
            FILTER (WHERE type = 'model.called'))), []::VARCHAR[]) AS models,
        min(time) FILTER (WHERE type = 'run.started') AS started_at,
        min(time) FILTER (WHERE type = 'run.completed') AS ended_at,
        any_value(outcome) FILTER (WHERE type = 'run.completed') AS outcome,
        any_value(result_digest) FILTER (WHERE type = 'run.completed') AS result_digest,
        bool_and(accepted) FILTER (WHERE type = 'feedback.recorded') AS accepted,
        min(time) FILTER (WHERE type = 'feedback.recorded' AND NOT accepted) AS corrected_at,
        count(*) FILTER (WHERE type = 'model.called') AS model_calls,
        count(*) FILTER (WHERE type = 'model.called' AND NOT priced) AS unpriced_calls,
        coalesce(sum(input_tokens), 0) AS input_tokens,
        coalesce(sum(output_tokens), 0) AS output_tokens,
        coalesce(sum(cost_usd), 0)::DECIMAL(38, 9) AS priced_cost_usd,
        count(*) FILTER (WHERE type = 'tool.called') AS tool_calls,
        count(*) FILTER (WHERE type = 'tool.called' AND status = 'error') AS tool_errors,
        count(*) FILTER (WHERE type = 'policy.evaluated') AS policy_evaluations,
        count(*) FILTER (WHERE type = 'policy.evaluated' AND decision = 'deny') AS denials,
        count(*) FILTER (WHERE type = 'policy.evaluated' AND decision = 'require_approval')
            AS approvals_required,
        count(*) FILTER (WHERE type = 'approval.requested') AS approvals_requested,
        count(*) FILTER (WHERE type = 'approval.decided' AND decision = 'approved')
            AS approvals_granted,
        count(*) FILTER (WHERE type = 'approval.decided' AND decision = 'rejected')
            AS approvals_rejected,
        count(*) FILTER (WHERE type = 'change.proposed') AS changes_proposed,
        count(*) FILTER (WHERE type = 'change.applied') AS changes_applied,
        count(*) FILTER (WHERE type = 'change.reverted') AS changes_reverted,
        count(*) FILTER (WHERE type = 'budget.exceeded') AS budget_breaches,
        count(*) AS events,
        min(idx) AS first_idx,
        max(idx) AS last_idx
    FROM ev GROUP BY workspace, run_id
)
SELECT a.workspace, a.run_id, a.workflow, a.agent_id, a.agent_version, a.mode, a.risk_tier,
    a.replay_of, a.origin, CASE WHEN a.origin = '{REPLAY}' THEN a.replay_label END AS replay_id,
    a.decision_log, a.models,
    coalesce(a.route_label, nullif(array_to_string(a.models, '+'), '')) AS route,
    a.started_at, a.ended_at, epoch_ms(a.ended_at) - epoch_ms(a.started_at) AS duration_ms,
    a.outcome, a.result_digest, a.accepted,
    coalesce(a.outcome = 'succeeded' AND a.accepted IS DISTINCT FROM false, false) AS successful,
    a.corrected_at, epoch_ms(a.corrected_at) - epoch_ms(a.ended_at) AS time_to_correction_ms,
    a.model_calls, a.unpriced_calls, a.input_tokens, a.output_tokens,
    CASE WHEN a.unpriced_calls = 0 THEN a.priced_cost_usd END AS cost_usd, a.priced_cost_usd,
    a.tool_calls, a.tool_errors,
    a.policy_evaluations, a.denials, a.approvals_required, a.approvals_requested,
    a.approvals_granted, a.approvals_rejected, ap.wait_ms AS approval_wait_ms,
    ap.max_ms AS approval_latency_max_ms, a.changes_proposed, a.changes_applied,
    a.changes_reverted, a.budget_breaches, a.events, a.first_idx, a.last_idx
FROM agg a LEFT JOIN ap USING (workspace, run_id)
"""
