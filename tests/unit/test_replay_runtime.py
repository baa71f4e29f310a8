"""One agent function, two runs of it: recorded live through the agent runtime (over a ledger in
this process, a stand-in person deciding through the platform), then replayed with fidelity.

Every way a live run can go (a person's approval, a rejection, an expired wait, a deadline, a
tool error handled or not, a kill switch, a model with no price) reproduces event for event.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from domain.approvals import ApprovalRow
from domain.ledger import Ledger
from domain.records import Record
from ingest.embedded import StandInApprover, Verdict, embedded_runtime
from replay.engine import ReplayConfig, replay_one, run_replay
from replay.history import RecordedRun, load_runs
from replay.replaying import comparable
from tachograph.agents import AgentSpec
from tachograph.builder import rfc3339, seq_event_id
from tachograph.context import Context
from tachograph.contract.canonical import loads
from tachograph.errors import ToolFailed
from tachograph.models import ChatRequest, ChatResponse, ModelRegistry
from tachograph.tools import ToolRegistry
from tests.factories import FakeClock, make_ledger

WS = "acme"
WORKFLOW = "refunds"
PERSON = "pat@acme.test"


class StepClock(FakeClock):
    """A run clock that moves 1 ms every time it is read, and by hand (a slow model)."""

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


class SlowModel:
    """A local model that takes ``seconds`` of the run's clock per call; no price is known for it."""

    provider = "test"
    name = "slow-model"

    def __init__(self, clock: StepClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    def complete(self, request: ChatRequest) -> ChatResponse:
        self.clock.advance(self.seconds)
        return ChatResponse("issue", 20, 5, Decimal(int(self.seconds * 1000)))


class World:
    """What the live tools touch: the refunds issued and the ledger an operator halts in."""

    def __init__(self) -> None:
        self.issued: list[int] = []
        self.ledger: Ledger | None = None


WORLD = World()


def lookup(args: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": args["id"], "tier": "gold" if args["id"] % 2 else "free"}


def flaky(args: Mapping[str, Any]) -> dict[str, Any]:
    raise ConnectionError(f"billing backend down for {args['id']}")


def issue(args: Mapping[str, Any]) -> dict[str, Any]:
    WORLD.issued.append(args["id"])
    return {"issued": args["id"]}


def halt(scope: str, target: str, reason: str) -> None:
    """An operator halts ``target`` through the platform (a ``halt.set`` record)."""
    assert WORLD.ledger is not None
    WORLD.ledger.append_records([Record(
        "halt.set", WS, rfc3339(WORLD.ledger.clock()), {"name": "Olga Ops", "key_id": "k-ops"},
        {"scope": scope, "target": target, "reason": reason, "via": "api"})])


def page_ops(args: Mapping[str, Any]) -> dict[str, Any]:
    """An operator is paged and halts the whole workflow."""
    halt("workflow", WORKFLOW, "refunds look wrong")
    return {"paged": True}


TOOLS = ToolRegistry()
TOOLS.register("lookup", lookup, "read")
TOOLS.register("flaky", flaky, "read")
TOOLS.register("issue", issue, "write")
TOOLS.register("page_ops", page_ops, "write")


def refund_agent(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Look the customer up, ask the model, ask a person above 100, issue the refund."""
    info = ctx.tool("lookup", {"id": input["id"]})
    note = "billing ok"
    if input.get("flaky") == "handled":
        try:
            ctx.tool("flaky", {"id": input["id"]})
        except ToolFailed as e:
            note = e.error
    elif input.get("flaky") == "unhandled":
        ctx.tool("flaky", {"id": input["id"]})
    for n in range(1 + input.get("extra_calls", 0)):
        ctx.llm(f"{ctx.prompt('ask')} customer {input['id']} ({info['tier']}), {note}, try {n}")
    if input.get("page_ops"):
        ctx.tool("page_ops", {"why": "refund spike"})
    change = ctx.propose_change("refund", {"issued": False}, {"issued": True}, reversible=False)
    if input.get("amount", 0) > 100:
        ctx.policy("refunds.limit", "issue", "require_approval", "over 100")
        if not ctx.request_approval(f"refund {input['amount']} to {input['id']}", input["risk"], change,
                                    timeout=input.get("wait", 10)):
            return {"outcome": "escalated", "issued": False}
    else:
        ctx.policy("refunds.limit", "issue", "allow", "small")
    ctx.tool("issue", {"id": input["id"]})
    ctx.apply_change(change)
    return {"issued": True, "at": str(ctx.now())}


AGENT = AgentSpec("tests.unit.test_replay_runtime:refund_agent", refund_agent, TOOLS,
                  {"ask": "Refund or not?"}, WORKFLOW, {"id": "refund-agent", "version": "1"})

# run id -> (input, budget): every way a live run can go
RUNS: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "plain": ({"id": 1, "amount": 10}, None),
    "tool-error-handled": ({"id": 2, "flaky": "handled"}, None),
    "tool-error-unhandled": ({"id": 3, "flaky": "unhandled"}, None),
    "approved": ({"id": 4, "amount": 500, "risk": "medium"}, None),
    "rejected": ({"id": 5, "amount": 500, "risk": "high"}, None),
    "expired": ({"id": 6, "amount": 500, "risk": "low", "wait": 0.2}, None),
    "deadline": ({"id": 7, "extra_calls": 3}, {"deadline_s": 10}),
    "halted-waiting": ({"id": 9, "amount": 500, "risk": "medium", "wait": 1}, None),
    "halted": ({"id": 8, "page_ops": True}, None),  # last: it halts the whole workflow
}


def person(row: ApprovalRow) -> Verdict | None:
    """Pat approves medium risks, rejects high ones and never gets to the low ones; the run
    ``halted-waiting`` is halted by an operator while it waits for Pat."""
    if row.run_id == "halted-waiting":
        halt("run", row.run_id, "stop that one")
        return None
    return {"medium": ("approved", None), "high": ("rejected", "too risky")}.get(row.risk)


def _model(run_id: str) -> str:
    return "slow-model" if run_id == "deadline" else "sim-small-v1"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RecordedRun]:
    """Every run of ``RUNS`` recorded live, into a ledger requiring a person behind each approval."""
    ledger = make_ledger(tmp_path_factory.mktemp("live") / "ledger.db", approval_decisions="person")
    WORLD.ledger = ledger
    clock = StepClock()
    models = ModelRegistry()
    models.register(SlowModel(clock, 6.0))  # two calls fit in the 10 s deadline, the third does not
    with StandInApprover(ledger, WS, PERSON, person), \
            embedded_runtime(ledger, WS, clock=clock, event_ids=seq_event_id, models=models) as rt:
        for run_id, (inp, budget) in RUNS.items():
            rt.run(AGENT, inp, run_id=run_id, budget=budget, model=_model(run_id))
    assert ledger.store.quarantine_count() == 0
    return {r.run_id: r for r in load_runs(ledger.store, workflow=WORKFLOW)}


def _types(run: RecordedRun) -> list[str]:
    return [e["type"] for e in run.events]


def test_the_live_runs_went_every_way_a_run_can_go(recorded: dict[str, RecordedRun]) -> None:
    outcome = {rid: (r.completed or {})["outcome"] for rid, r in recorded.items()}
    assert outcome == {
        "plain": "succeeded", "tool-error-handled": "succeeded", "tool-error-unhandled": "failed",
        "approved": "succeeded", "rejected": "escalated", "expired": "escalated",
        "deadline": "cancelled", "halted-waiting": "cancelled", "halted": "cancelled",
    }
    decided = {rid: [e["data"] for e in r.events if e["type"] == "approval.decided"] for rid, r in recorded.items()}
    assert [(d["decision"], d["by"]) for d in decided["approved"]] == [("approved", PERSON)]
    assert [(d["decision"], d.get("reason")) for d in decided["rejected"]] == [("rejected", "too risky")]
    assert "approval.requested" in _types(recorded["expired"]) and decided["expired"] == []
    breach = [e["data"] for e in recorded["deadline"].events if e["type"] == "budget.exceeded"]
    assert [(b["limit"], b["limit_value"]) for b in breach] == [("deadline", Decimal(10))]
    assert breach[0]["observed"] > 12
    assert _types(recorded["deadline"]).count("model.called") == 2
    called = [e["data"] for e in recorded["deadline"].events if e["type"] == "model.called"]
    assert all(c["priced"] is False for c in called)
    assert "tool 'flaky' failed: ConnectionError" in (recorded["tool-error-unhandled"].completed or {})["error"]
    assert recorded["halted"].completed["result"]["kill_switch"]["target"] == WORKFLOW  # type: ignore[index]
    waited = recorded["halted-waiting"]
    assert _types(waited)[-2:] == ["approval.requested", "run.completed"]
    assert waited.completed["result"]["kill_switch"]["scope"] == "run"  # type: ignore[index]


def test_every_live_run_replays_with_fidelity(recorded: dict[str, RecordedRun]) -> None:
    issued = list(WORLD.issued)
    report = run_replay(list(recorded.values()), AGENT, ReplayConfig("fid", "2026-12-01T00:00:00Z"),
                        ModelRegistry())
    diverged = {r["run_id"]: r["first_divergence"] for r in report["runs"] if r["first_divergence"]}
    assert diverged == {}
    assert report["summary"]["statuses"] == {"reproduced": len(RUNS)}
    assert report["gate"]["passed"]
    assert WORLD.issued == issued  # no refund was issued again


@pytest.mark.parametrize("run_id", list(RUNS))
def test_a_replayed_run_repeats_the_recorded_events_and_times(recorded: dict[str, RecordedRun], run_id: str) -> None:
    original = recorded[run_id]
    result, events = replay_one(original, AGENT, ReplayConfig("fid", "t"), ModelRegistry())
    assert result.status == "reproduced", result.first_divergence
    assert [comparable(e) for e in events] == [comparable(e) for e in original.events]
    assert [e["time"] for e in events] == [e["time"] for e in original.events]
    assert [e["event_id"] for e in events] == [f"fid.{run_id}-{n}" for n in range(len(events))]


def test_a_replayed_approval_repeats_the_persons_decision_and_names_it(recorded: dict[str, RecordedRun]) -> None:
    for run_id in ("approved", "rejected"):
        original = recorded[run_id]
        _result, events = replay_one(original, AGENT, ReplayConfig("fid", "t"), ModelRegistry())
        [asked] = [e["data"] for e in original.events if e["type"] == "approval.requested"]
        [was] = [e["data"] for e in original.events if e["type"] == "approval.decided"]
        [now] = [e["data"] for e in events if e["type"] == "approval.decided"]
        assert asked["approval_id"] == f"{run_id}/approval-4"
        assert now["approval_id"] == f"fid.{run_id}/approval-4"
        assert now["replayed_from"] == asked["approval_id"]
        assert {k: now[k] for k in ("decision", "by")} == {k: was[k] for k in ("decision", "by")}
        assert now.get("reason") == was.get("reason")


def test_a_recorded_deadline_stop_reproduces_its_observed_time(recorded: dict[str, RecordedRun]) -> None:
    original = recorded["deadline"]
    _result, events = replay_one(original, AGENT, ReplayConfig("fid", "t"), ModelRegistry())
    assert [e["data"] for e in events if e["type"] == "budget.exceeded"] == [
        e["data"] for e in original.events if e["type"] == "budget.exceeded"]
    assert events[-1]["data"] == original.events[-1]["data"]


def test_a_what_if_replay_is_not_stopped_by_the_halt_in_force_now(recorded: dict[str, RecordedRun]) -> None:
    """The workflow is still halted; a what-if replay of a run that completed goes on regardless."""
    result, events = replay_one(recorded["plain"], AGENT, ReplayConfig("wi", "t", candidate_model="sim-large-v2"),
                                ModelRegistry())
    assert events[-1]["data"]["outcome"] == "succeeded"
    assert "kill_switch" not in (events[-1]["data"].get("result") or {})
    assert result.status in ("changed", "unchanged")


def test_an_approval_id_of_another_run_does_not_compare_equal(recorded: dict[str, RecordedRun]) -> None:
    """Only the run's own prefix is stripped: a recording naming another run's approval diverges."""
    original = recorded["approved"]
    moved = RecordedRun(original.workspace, original.run_id, [
        {**e, "data": {**e["data"], "approval_id": "someone-else/approval-4"}}
        if e["type"] in ("approval.requested", "approval.decided") else e
        for e in original.events
    ])
    result, _ = replay_one(moved, AGENT, ReplayConfig("fid", "t"), ModelRegistry())
    assert result.status == "nondeterministic"
    assert result.first_divergence is not None
    assert result.first_divergence["seq"] == 5
    assert result.first_divergence["expected"]["data"]["approval_id"] == "someone-else/approval-4"
    assert result.first_divergence["actual"]["data"]["approval_id"] == "approval-4"


def test_the_stand_in_person_decided_through_the_platform(recorded: dict[str, RecordedRun]) -> None:
    """Each recorded approval.decided repeats an ``approval.decision`` record the stand-in wrote."""
    assert WORLD.ledger is not None
    rows = WORLD.ledger.store.records(WS, limit=100, record_type="approval.decision")
    decisions = [loads(r.data)["record"] for r in rows]
    assert sorted((d["data"]["approval_id"], d["data"]["decision"], d["data"]["by"]) for d in decisions) == [
        ("approved/approval-4", "approved", PERSON), ("rejected/approval-4", "rejected", PERSON)]
    assert {d["actor"]["kind"] for d in decisions} == {"stand-in"}
    expired = WORLD.ledger.store.approval(WS, "expired/approval-4")
    assert expired is not None and expired.decision is None and expired.closed


def test_a_stand_in_whose_policy_fails_raises_it_when_it_stops(tmp_path) -> None:
    ledger = make_ledger(tmp_path / "ledger.db", approval_decisions="person")

    def no_rule(row: ApprovalRow) -> Verdict:
        raise LookupError(f"no rule for {row.risk} risks")

    outcomes = []
    with pytest.raises(LookupError, match="no rule for medium risks"):
        with StandInApprover(ledger, WS, PERSON, no_rule), \
                embedded_runtime(ledger, WS, event_ids=seq_event_id, models=ModelRegistry()) as rt:
            run = rt.run(AGENT, {"id": 9, "amount": 500, "risk": "medium", "wait": 0.3}, run_id="no-rule")
            outcomes.append((run.outcome, run.result))
    assert outcomes == [("escalated", {"outcome": "escalated", "issued": False})]  # nobody decided
