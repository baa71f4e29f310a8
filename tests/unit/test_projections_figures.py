"""Every figure of every analytics view equals an independent computation in plain Python."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from domain.ports import LedgerStore
from domain.workload import Workload
from projections.projector import Projector, connect
from projections.views import budget_summary_sql
from tachograph.contract.events import SPEC
from tests.factories import append_deciding, make_ledger

NANO = Decimal("1e-9")


class RunBuilder:
    """Hand-built run events with chosen times, costs and decisions."""

    def __init__(self, ws: str, run: str, workflow: str, start: str, version: str = "1.0.0",
                 route: str | None = None, replay_of: str | None = None) -> None:
        self.ws, self.run, self.seq = ws, run, 0
        self.agent = {"id": f"{workflow}-agent", "version": version}
        self.t = datetime.fromisoformat(start)
        self.events: list[dict[str, Any]] = []
        data: dict[str, Any] = {"workflow": workflow, "mode": "execute", "risk_tier": "high"}
        if route:
            data["labels"] = {"route": route}
        if replay_of:
            data["replay_of"] = replay_of
        self.add("run.started", data, 0)

    def add(self, etype: str, data: dict[str, Any], after_s: float = 1.0,
            tz: str | None = None) -> RunBuilder:
        self.t += timedelta(seconds=after_s)
        when = self.t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if tz is not None:
            when = self.t.astimezone(datetime.strptime(tz, "%z").tzinfo).isoformat(
                timespec="milliseconds")
        self.events.append({
            "spec": SPEC, "event_id": f"{self.run}-{self.seq}", "workspace": self.ws,
            "run_id": self.run, "seq": self.seq, "type": etype, "time": when,
            "agent": self.agent, "data": data,
            **({"trace_id": "0af7651916cd43dd8448eb211c80319c"} if self.seq == 0 else {}),
        })
        self.seq += 1
        return self

    def model(self, cost: Any, tin: int = 100, tout: int = 10, model: str = "m1",
              priced: bool | None = None) -> RunBuilder:
        data = {"call_id": f"m{self.seq}", "provider": "p", "model": model, "input_tokens": tin,
                "output_tokens": tout, "cost_usd": cost, "latency_ms": 10}
        if priced is not None:
            data["priced"] = priced
        return self.add("model.called", data)

    def unpriced(self, tin: int = 100, tout: int = 10, model: str = "local") -> RunBuilder:
        """A call of a model with no known price: recorded as cost 0, priced false."""
        return self.model("0", tin, tout, model, priced=False)

    def tool(self, status: str = "ok") -> RunBuilder:
        return self.add("tool.called", {"call_id": f"t{self.seq}", "tool": "kb.search", "args": {},
                                        "status": status, "latency_ms": 3, "side_effect": "read"})

    def policy(self, decision: str, policy: str = "writes") -> RunBuilder:
        return self.add("policy.evaluated", {"policy": policy, "action": "erp.post",
                                             "decision": decision, "reason": "r"})

    def change(self, cid: str, approval: str | None = None, wait_s: float = 0,
               granted: bool = True, revert: bool = False) -> RunBuilder:
        self.add("change.proposed", {"change_id": cid, "target": "erp.post", "before": {},
                                     "after": {"x": 1}, "reversible": True})
        if approval:
            self.add("approval.requested", {"approval_id": approval, "summary": "s",
                                            "risk": "medium", "change_id": cid})
            self.add("approval.decided", {"approval_id": approval,
                                          "decision": "approved" if granted else "rejected",
                                          "by": "alice@acme.test"}, wait_s)
            if not granted:
                return self
        self.add("change.applied", {"change_id": cid})
        if revert:
            self.add("change.reverted", {"change_id": cid, "by": "bob@acme.test"})
        return self

    def done(self, outcome: str, feedback: bool | None = None, feedback_after_s: float = 60,
             tz: str | None = None) -> list[dict[str, Any]]:
        self.add("run.completed", {"outcome": outcome}, 2, tz=tz)
        if feedback is not None:
            self.add("feedback.recorded", {"accepted": feedback, "by": "carol@acme.test"},
                     feedback_after_s)
        return self.events


def hand_built() -> list[dict[str, Any]]:
    """Small runs whose figures are easy to check by eye, covering every event type."""
    runs = [
        RunBuilder("acme", "h-1", "refunds", "2026-11-02T10:00:00+00:00", route="p/m1")
        .model("0.100000001").model(Decimal("0.123456789")).tool().policy("allow")
        .change("c1").done("succeeded"),
        RunBuilder("acme", "h-2", "refunds", "2026-11-02T11:00:00+00:00", route="p/m1")
        .model("0.3").policy("deny").policy("require_approval")
        .change("c2", approval="a1", wait_s=90).tool("error").done("succeeded", feedback=False,
                                                                     feedback_after_s=300),
        RunBuilder("acme", "h-3", "refunds", "2026-11-03T09:00:00+00:00", version="1.1.0")
        .model("0.05", model="m2").model(0).policy("require_approval")
        .change("c3", approval="a2", wait_s=30, granted=False).done("failed"),
        RunBuilder("acme", "h-4", "refunds", "2026-11-09T23:30:00+00:00", version="1.1.0",
                   replay_of="h-1")
        .model("0.2").add("budget.exceeded", {"limit": "cost_usd", "limit_value": Decimal("0.15"),
                                              "observed": Decimal("0.2")})
        .done("cancelled", tz="+05:00"),
        RunBuilder("globex", "h-5", "refunds", "2026-11-03T23:59:59-02:00")
        .model("1").model(Decimal("12345678901.123456789"))  # 20 digits: no binary float holds it
        .change("c5", revert=True).done("succeeded", feedback=True),
        # still running: counted in cost per outcome, no outcome yet
        RunBuilder("globex", "h-6", "onboarding", "2026-11-04T08:00:00+00:00").model("0.000000001")
        .tool().events,
        # a local model with no price: its calls' cost is unknown, not 0
        RunBuilder("acme", "u-1", "local-llm", "2026-11-05T09:00:00+00:00")
        .model("0.2", priced=True).unpriced().unpriced().done("succeeded"),
        RunBuilder("acme", "u-2", "local-llm", "2026-11-05T10:00:00+00:00")
        .model("0.1").done("succeeded"),
        RunBuilder("acme", "u-3", "local-llm", "2026-11-12T10:00:00+00:00")
        .unpriced().add("budget.exceeded", {"limit": "tokens", "limit_value": 10, "observed": 110})
        .done("cancelled"),
    ]
    return [ev for run in runs for ev in run]


def workload_events(runs: int = 80) -> list[dict[str, Any]]:
    """Generated events (two workspaces) interleaved after the hand-built ones."""
    return list(Workload(seed=5, runs=runs, workspaces=("acme", "globex")).events())


def build_store(path: Path, events: list[dict[str, Any]]) -> LedgerStore:
    """A SQLite ledger holding ``events`` (all must be accepted; each approval decided by the
    person it names first, as the ledger requires)."""
    ledger = make_ledger(path)
    report = append_deciding(ledger, events)
    assert report.accepted == len(events), [r.reason for r in report.results if r.reason][:3]
    return ledger.store


# ---- the independent computation ----------------------------------------------------------

def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _ms(a: datetime, b: datetime) -> int:
    return round((b - a) / timedelta(milliseconds=1))


def nearest_rank(values: list[Any], q: float) -> Any:
    """Nearest-rank quantile: the ceil(q·n)-th smallest value."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def _digest(value: Any) -> str:
    """MD5 of a JSON value written as DuckDB writes JSON back (compact, keys in order)."""
    return hashlib.md5(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def expected_runs(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per-run facts computed from the events in plain Python."""
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_run[(ev["workspace"], ev["run_id"])].append(ev)
    out = {}
    for key, evs in by_run.items():
        evs.sort(key=lambda e: e["seq"])
        start, d0 = evs[0], evs[0]["data"]
        kinds = defaultdict(list)
        for e in evs:
            kinds[e["type"]].append(e)
        completed = kinds["run.completed"][0] if kinds["run.completed"] else None
        feedback = kinds["feedback.recorded"]
        accepted = None if not feedback else all(f["data"]["accepted"] for f in feedback)
        rejections = [_ts(f["time"]) for f in feedback if not f["data"]["accepted"]]
        models = sorted({f"{e['data']['provider']}/{e['data']['model']}" for e in kinds["model.called"]})
        requested = {e["data"]["approval_id"]: _ts(e["time"]) for e in kinds["approval.requested"]}
        waits = [_ms(requested[e["data"]["approval_id"]], _ts(e["time"]))
                 for e in kinds["approval.decided"]]
        outcome = completed["data"]["outcome"] if completed else None
        started_at, ended_at = _ts(start["time"]), _ts(completed["time"]) if completed else None
        corrected = min(rejections) if rejections else None
        unpriced = [e for e in kinds["model.called"] if e["data"].get("priced") is False]
        priced_cost = sum((Decimal(str(e["data"]["cost_usd"])) for e in kinds["model.called"]
                           if e not in unpriced), Decimal(0))
        out[key] = {
            "workspace": key[0], "run_id": key[1], "workflow": d0["workflow"],
            "agent_id": start["agent"]["id"], "agent_version": start["agent"]["version"],
            "mode": d0["mode"], "risk_tier": d0["risk_tier"], "replay_of": d0.get("replay_of"),
            # every run here came in as a publisher's file import: production, even h-4, which
            # only claims to replay h-1 (a replay is a run the platform's replay engine wrote)
            "origin": "production", "replay_id": None, "decision_log": False,
            "models": models,
            "route": (d0.get("labels") or {}).get("route") or ("+".join(models) or None),
            "started_at": started_at, "ended_at": ended_at,
            "duration_ms": _ms(started_at, ended_at) if ended_at else None,
            "outcome": outcome, "accepted": accepted,
            "result_digest": _digest(completed["data"]["result"])
            if completed and "result" in completed["data"] else None,
            "successful": outcome == "succeeded" and accepted is not False,
            "corrected_at": corrected,
            "time_to_correction_ms": _ms(ended_at, corrected) if corrected and ended_at else None,
            "model_calls": len(kinds["model.called"]),
            "input_tokens": sum(e["data"]["input_tokens"] for e in kinds["model.called"]),
            "output_tokens": sum(e["data"]["output_tokens"] for e in kinds["model.called"]),
            "unpriced_calls": len(unpriced),
            "cost_usd": None if unpriced else priced_cost,
            "priced_cost_usd": priced_cost,
            "tool_calls": len(kinds["tool.called"]),
            "tool_errors": sum(e["data"]["status"] == "error" for e in kinds["tool.called"]),
            "policy_evaluations": len(kinds["policy.evaluated"]),
            "denials": sum(e["data"]["decision"] == "deny" for e in kinds["policy.evaluated"]),
            "approvals_required": sum(e["data"]["decision"] == "require_approval"
                                      for e in kinds["policy.evaluated"]),
            "approvals_requested": len(kinds["approval.requested"]),
            "approvals_granted": sum(e["data"]["decision"] == "approved" for e in kinds["approval.decided"]),
            "approvals_rejected": sum(e["data"]["decision"] == "rejected" for e in kinds["approval.decided"]),
            "approval_wait_ms": sum(waits) if waits else None,
            "approval_latency_max_ms": max(waits) if waits else None,
            "changes_proposed": len(kinds["change.proposed"]),
            "changes_applied": len(kinds["change.applied"]),
            "changes_reverted": len(kinds["change.reverted"]),
            "budget_breaches": len(kinds["budget.exceeded"]),
            "events": len(evs),
        }
    return out


def _group(runs: dict[Any, dict[str, Any]], key) -> dict[tuple, list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs.values():
        groups[key(r)].append(r)
    return groups


def _week(d: date) -> date:
    return d - timedelta(days=d.weekday())


def expected_cost(runs: dict[Any, dict[str, Any]], key) -> dict[tuple, dict[str, Any]]:  # type: ignore[no-untyped-def]
    out = {}
    for k, rs in _group(runs, key).items():
        costs = [r["cost_usd"] for r in rs]
        known = None not in costs  # one run of unknown cost makes every money total unknown
        total = sum(costs, Decimal(0)) if known else None
        ok = sum(r["successful"] for r in rs)
        out[k] = {
            "runs": len(rs), "successful_outcomes": ok, "total_cost_usd": total,
            "cost_per_outcome_usd": (total / ok).quantize(NANO, ROUND_HALF_UP)
            if ok and total is not None else None,
            "p50_cost_per_run_usd": nearest_rank(costs, 0.5) if known else None,
            "p95_cost_per_run_usd": nearest_rank(costs, 0.95) if known else None,
            "unpriced_runs": sum(r["unpriced_calls"] > 0 for r in rs),
            "unpriced_calls": sum(r["unpriced_calls"] for r in rs),
            "priced_cost_usd": sum((r["priced_cost_usd"] for r in rs), Decimal(0)),
        }
    return out


def expected_violations(runs: dict[Any, dict[str, Any]], key) -> dict[tuple, dict[str, Any]]:  # type: ignore[no-untyped-def]
    out = {}
    for k, rs in _group(runs, key).items():
        denied = sum(r["denials"] > 0 for r in rs)
        tools = sum(r["tool_calls"] for r in rs)
        denials = sum(r["denials"] for r in rs)
        out[k] = {
            "runs": len(rs), "runs_with_denial": denied, "violation_rate": denied / len(rs),
            "tool_calls": tools, "denials": denials,
            "denials_per_1000_tool_calls": 1000 * denials / tools if tools else None,
            **{f: sum(r[f] for r in rs) for f in ("approvals_required", "approvals_requested",
                                                   "approvals_granted", "approvals_rejected")},
        }
    return out


def expected_slo(runs: dict[Any, dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    out = {}
    for k, rs in _group(runs, lambda r: (r["workspace"], r["workflow"])).items():
        completed = [r for r in rs if r["outcome"]]
        fb = [r for r in rs if r["accepted"] is not None]
        succeeded = sum(r["outcome"] == "succeeded" for r in rs)
        ttc = [r["time_to_correction_ms"] for r in rs if r["time_to_correction_ms"] is not None]
        out[k] = {
            "runs": len(rs), "completed": len(completed), "succeeded": succeeded,
            **{o: sum(r["outcome"] == o for r in rs) for o in ("failed", "escalated", "cancelled")},
            "successful_outcomes": sum(r["successful"] for r in rs),
            "success_rate": succeeded / len(completed) if completed else None,
            "runs_with_feedback": len(fb), "accepted_runs": sum(bool(r["accepted"]) for r in fb),
            "acceptance_rate": sum(bool(r["accepted"]) for r in fb) / len(fb) if fb else None,
            "corrected_runs": sum(r["corrected_at"] is not None for r in rs),
            "p50_time_to_correction_ms": nearest_rank(ttc, 0.5),
            "p95_time_to_correction_ms": nearest_rank(ttc, 0.95),
        }
    return out


# ---- comparing ----------------------------------------------------------------------------

def fetch(con, sql: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


def keyed(rows: list[dict[str, Any]], *dims: str) -> dict[tuple, dict[str, Any]]:
    out = {tuple(r[d] for d in dims): {k: v for k, v in r.items() if k not in dims} for r in rows}
    assert len(out) == len(rows), "group keys must be unique"
    return out


def assert_same(actual: dict[tuple, dict[str, Any]], expected: dict[tuple, dict[str, Any]]) -> None:
    assert sorted(actual, key=repr) == sorted(expected, key=repr)
    for k, exp in expected.items():
        got = actual[k]
        assert set(got) == set(exp), k
        for field, value in exp.items():
            if isinstance(value, float):
                assert got[field] == pytest.approx(value, rel=1e-12), (k, field)
            else:
                assert got[field] == value, (k, field, got[field], value)
                assert type(got[field]) is type(value) or value is None, (k, field)


@pytest.fixture(scope="module")
def projected(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("figures")
    events = hand_built() + workload_events()
    store = build_store(tmp / "ledger.db", events)
    con = connect(tmp / "analytics.duckdb")
    Projector(store, con, batch_size=97).catch_up()
    yield con, events, expected_runs(events)
    con.close()


def test_runs_view_has_every_fact_of_every_run(projected) -> None:  # type: ignore[no-untyped-def]
    con, _, runs = projected
    expected = {k: {f: v for f, v in r.items() if f not in ("workspace", "run_id")}
                for k, r in runs.items()}
    assert_same(keyed(fetch(con, "SELECT * FROM runs"), "workspace", "run_id"), expected)


def test_hand_built_runs_have_the_figures_worked_out_by_hand(projected) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = projected
    got = keyed(fetch(con, "SELECT * FROM runs WHERE run_id LIKE 'h-%'"), "run_id")
    assert got[("h-1",)]["cost_usd"] == Decimal("0.223456790")  # number 0.123456789 kept exact
    assert got[("h-2",)]["successful"] is False  # succeeded, then rejected by a person
    assert got[("h-2",)]["time_to_correction_ms"] == 300_000
    assert got[("h-2",)]["approval_wait_ms"] == 90_000
    assert got[("h-4",)]["ended_at"].date() == date(2026, 11, 9)  # +05:00 offset read as UTC
    assert got[("h-4",)]["replay_of"] == "h-1" and got[("h-4",)]["budget_breaches"] == 1
    assert got[("h-5",)]["started_at"].date() == date(2026, 11, 4)  # -02:00 crosses midnight
    assert got[("h-5",)]["cost_usd"] == Decimal("12345678902.123456789")  # a JSON number, exact
    assert got[("h-6",)]["outcome"] is None and got[("h-6",)]["cost_usd"] == NANO
    assert got[("h-3",)]["route"] == "p/m1+p/m2" and got[("h-3",)]["models"] == ["p/m1", "p/m2"]


@pytest.mark.parametrize(
    ("view", "dims", "key"),
    [
        ("cost_per_outcome", ("workspace", "workflow", "day"),
         lambda r: (r["workspace"], r["workflow"], r["started_at"].date())),
        ("cost_per_outcome_weekly", ("workspace", "workflow", "week"),
         lambda r: (r["workspace"], r["workflow"], _week(r["started_at"].date()))),
        ("cost_per_outcome_by_route", ("workspace", "workflow", "route"),
         lambda r: (r["workspace"], r["workflow"], r["route"])),
        ("cost_per_outcome_by_agent_version", ("workspace", "workflow", "agent", "agent_version"),
         lambda r: (r["workspace"], r["workflow"], r["agent_id"], r["agent_version"])),
    ],
)
def test_cost_per_outcome_matches_the_contract_definition(projected, view, dims, key) -> None:  # type: ignore[no-untyped-def]
    con, _, runs = projected
    assert_same(keyed(fetch(con, f"SELECT * FROM {view}"), *dims), expected_cost(runs, key))


def test_cost_per_outcome_counts_failed_runs_cost_but_not_their_outcome(projected) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = projected
    rows = keyed(fetch(con, "SELECT * FROM cost_per_outcome WHERE workspace = 'acme' AND "
                            "workflow = 'refunds'"), "day")
    nov2 = rows[(date(2026, 11, 2),)]
    # h-1 succeeded, h-2 succeeded but was rejected by feedback: one successful outcome
    assert nov2["runs"] == 2 and nov2["successful_outcomes"] == 1
    assert nov2["total_cost_usd"] == Decimal("0.523456790")
    assert nov2["cost_per_outcome_usd"] == Decimal("0.523456790")
    nov3 = rows[(date(2026, 11, 3),)]
    assert nov3["successful_outcomes"] == 0 and nov3["cost_per_outcome_usd"] is None


def test_violation_rates_match_by_workflow_and_agent_version(projected) -> None:  # type: ignore[no-untyped-def]
    con, _, runs = projected
    key = lambda r: (r["workspace"], r["workflow"], r["agent_id"], r["agent_version"])  # noqa: E731
    assert_same(keyed(fetch(con, "SELECT * FROM violation_rates"),
                      "workspace", "workflow", "agent", "agent_version"),
                expected_violations(runs, key))


def test_violation_rates_by_policy_count_the_runs_that_evaluated_it(projected) -> None:  # type: ignore[no-untyped-def]
    con, events, runs = projected
    per: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"ev": 0, "deny": 0, "req": 0, "runs": {}})
    for ev in events:
        if ev["type"] == "policy.evaluated":
            k = (ev["workspace"], runs[(ev["workspace"], ev["run_id"])]["workflow"], ev["data"]["policy"])
            g = per[k]
            g["ev"] += 1
            g["deny"] += ev["data"]["decision"] == "deny"
            g["req"] += ev["data"]["decision"] == "require_approval"
            g["runs"].setdefault(ev["run_id"], 0)
            g["runs"][ev["run_id"]] += ev["data"]["decision"] == "deny"
    expected = {}
    for k, g in per.items():
        tools = sum(runs[(k[0], r)]["tool_calls"] for r in g["runs"])
        denied = sum(n > 0 for n in g["runs"].values())
        expected[k] = {"runs": len(g["runs"]), "runs_with_denial": denied,
                       "violation_rate": denied / len(g["runs"]), "evaluations": g["ev"],
                       "denials": g["deny"], "tool_calls": tools,
                       "denials_per_1000_tool_calls": 1000 * g["deny"] / tools if tools else None,
                       "approvals_required": g["req"], "decision_log_evaluations": 0}
    assert_same(keyed(fetch(con, "SELECT * FROM violation_rates_by_policy"),
                      "workspace", "workflow", "policy"), expected)


def test_approval_latency_percentiles_match(projected) -> None:  # type: ignore[no-untyped-def]
    con, events, runs = projected
    req = {(e["workspace"], e["run_id"], e["data"]["approval_id"]): e for e in events
           if e["type"] == "approval.requested"}
    dec = {(e["workspace"], e["run_id"], e["data"]["approval_id"]): e for e in events
           if e["type"] == "approval.decided"}
    groups: dict[tuple, list] = defaultdict(list)
    for k, r in req.items():
        groups[(k[0], runs[(k[0], k[1])]["workflow"], r["data"]["risk"])].append(k)
    expected = {}
    for g, keys in groups.items():
        lat = [_ms(_ts(req[k]["time"]), _ts(dec[k]["time"])) for k in keys if k in dec]
        expected[g] = {
            "requested": len(keys), "decided": len(lat), "pending": len(keys) - len(lat),
            "granted": sum(dec[k]["data"]["decision"] == "approved" for k in keys if k in dec),
            "rejected": sum(dec[k]["data"]["decision"] == "rejected" for k in keys if k in dec),
            "p50_latency_ms": nearest_rank(lat, 0.5), "p95_latency_ms": nearest_rank(lat, 0.95),
            "max_latency_ms": max(lat) if lat else None,
        }
    assert_same(keyed(fetch(con, "SELECT * FROM approval_latency"), "workspace", "workflow", "risk"),
                expected)


def test_outcome_slo_matches(projected) -> None:  # type: ignore[no-untyped-def]
    con, _, runs = projected
    assert_same(keyed(fetch(con, "SELECT * FROM outcome_slo"), "workspace", "workflow"),
                expected_slo(runs))


def test_budget_breaches_list_every_breach_with_its_run(projected) -> None:  # type: ignore[no-untyped-def]
    con, events, runs = projected
    expected = {}
    for e in events:
        if e["type"] == "budget.exceeded":
            r = runs[(e["workspace"], e["run_id"])]
            expected[(e["event_id"],)] = {
                "limit": e["data"]["limit"], "limit_value": Decimal(str(e["data"]["limit_value"])),
                "observed": Decimal(str(e["data"]["observed"])), "workflow": r["workflow"],
                "outcome": r["outcome"], "run_cost_usd": r["cost_usd"]}
    got = keyed(fetch(con, 'SELECT event_id, "limit", limit_value, observed, workflow, outcome, '
                           "run_cost_usd FROM budget_breaches"), "event_id")
    assert expected and got == expected


EVENT_VIEWS = {
    "model_calls": ("model.called",), "tool_calls": ("tool.called",),
    "policy_evaluations": ("policy.evaluated",),
    "approvals": ("approval.requested", "approval.decided"),
    "changes": ("change.proposed", "change.applied", "change.reverted"),
}


@pytest.mark.parametrize("view", sorted(EVENT_VIEWS))
def test_event_grain_views_hold_one_row_per_event_with_its_fields(projected, view) -> None:  # type: ignore[no-untyped-def]
    con, events, _ = projected
    got = keyed(fetch(con, f"SELECT * FROM {view}"), "event_id")
    mine = [e for e in events if e["type"] in EVENT_VIEWS[view]]
    assert len(got) == len(mine)
    for e in mine:
        row = got[(e["event_id"],)]
        assert row["run_id"] == e["run_id"] and row["seq"] == e["seq"]
        assert row["time"] == _ts(e["time"]) and row["date"] == _ts(e["time"]).date()
        for field, value in e["data"].items():
            if field in row and not isinstance(value, (dict, list)):
                exp = Decimal(str(value)) if field == "cost_usd" else value
                if field == "cost_usd" and e["data"].get("priced") is False:
                    exp = None  # unknown, not free
                if isinstance(exp, Decimal) and field != "cost_usd":
                    assert row[field] == pytest.approx(float(exp)), (field, e["event_id"])
                else:
                    assert row[field] == exp, (view, field, e["event_id"])


def test_a_run_mixing_priced_and_unpriced_calls_has_an_unknown_cost_never_a_silent_zero(projected) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = projected
    runs = keyed(fetch(con, "SELECT * FROM runs WHERE workflow = 'local-llm'"), "run_id")
    assert (runs[("u-1",)]["unpriced_calls"], runs[("u-1",)]["cost_usd"]) == (2, None)
    assert runs[("u-1",)]["priced_cost_usd"] == Decimal("0.2")
    assert (runs[("u-2",)]["unpriced_calls"], runs[("u-2",)]["cost_usd"]) == (0, Decimal("0.1"))
    calls = fetch(con, "SELECT cost_usd, priced FROM model_calls WHERE run_id = 'u-1' ORDER BY seq")
    assert calls == [{"cost_usd": Decimal("0.2"), "priced": True},
                     {"cost_usd": None, "priced": False}, {"cost_usd": None, "priced": False}]
    assert fetch(con, "SELECT DISTINCT priced FROM model_calls WHERE run_id = 'h-1'") == [{"priced": True}]
    day = keyed(fetch(con, "SELECT * FROM cost_per_outcome WHERE workflow = 'local-llm'"), "day")
    nov5 = day[(date(2026, 11, 5),)]
    assert (nov5["runs"], nov5["successful_outcomes"]) == (2, 2)
    assert (nov5["unpriced_runs"], nov5["unpriced_calls"]) == (1, 2)
    assert nov5["total_cost_usd"] is None and nov5["cost_per_outcome_usd"] is None
    assert nov5["p50_cost_per_run_usd"] is None and nov5["priced_cost_usd"] == Decimal("0.3")
    refunds = keyed(fetch(con, "SELECT * FROM cost_per_outcome WHERE workflow = 'refunds' "
                               "AND workspace = 'acme'"), "day")
    assert refunds[(date(2026, 11, 2),)]["unpriced_runs"] == 0  # priced groups keep their figures
    budgets = con.execute(
        "SELECT cost_of_breached_runs_usd FROM (" + budget_summary_sql(["workflow", "limit"])
        + ") WHERE workflow = 'local-llm'").fetchall()
    assert budgets == [(None,)]
    assert con.execute("SELECT cost_of_breached_runs_usd FROM (" + budget_summary_sql(["workflow"])
                       + ") WHERE workflow = 'local-llm'").fetchall() == [(None,)]


def test_the_cost_report_table_explains_unknown_costs(projected) -> None:  # type: ignore[no-untyped-def]
    from projections.reports import rich_table, run_report

    con, _, _ = projected
    local = run_report(con, "cost-per-outcome", ["workflow"])
    assert "2 run(s) had model calls with no known price" in str(rich_table(local).caption)
    violations = run_report(con, "violations", ["workflow"])
    assert rich_table(violations).caption is None
