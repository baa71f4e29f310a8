"""The run rules of shared/EVENT_CONTRACT.md, one by one, on the run aggregate itself."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import RunRuleError
from tachograph.contract.rules import RunState
from tests.factories import event

PROPOSE = {"change_id": "c1", "target": "crm.discount", "before": {}, "after": {"pct": 5},
           "reversible": True}


def run_of(*steps: tuple[str, dict[str, Any]]) -> RunState:
    """A state after run.started and ``steps`` (each accepted, in seq order)."""
    state = RunState("acme", "r1")
    for seq, (etype, data) in enumerate([("run.started", None), *steps]):
        ev = event(seq=seq, etype=etype, data=data)
        state.check(ev)
        state.apply(ev, f"h{seq}")
    return state


def breach(state: RunState, etype: str, data: dict[str, Any]) -> str:
    with pytest.raises(RunRuleError) as e:
        state.check(event(seq=state.next_seq, etype=etype, data=data))
    return str(e.value)


def test_a_run_starts_with_run_started_at_seq_0():
    assert "seq 0 must be run.started" in breach(RunState("acme", "r1"), "run.completed",
                                                 {"outcome": "succeeded"})
    state = run_of()
    assert "run.started must have seq 0" in breach(
        state, "run.started", {"workflow": "wf", "mode": "execute", "risk_tier": "low"})


def test_only_feedback_follows_run_completed_and_feedback_only_after_it():
    open_run = run_of()
    assert "feedback.recorded before run.completed" in breach(
        open_run, "feedback.recorded", {"accepted": True, "by": "ann"})
    done = run_of(("run.completed", {"outcome": "succeeded"}))
    assert "after run.completed" in breach(done, "change.proposed", PROPOSE)
    done.check(event(seq=done.next_seq, etype="feedback.recorded", data={"accepted": False, "by": "ann"}))


def test_an_approval_is_requested_once_and_decided_once():
    requested = run_of(("approval.requested", {"approval_id": "a1", "summary": "s", "risk": "low"}))
    assert "already requested" in breach(
        requested, "approval.requested", {"approval_id": "a1", "summary": "s", "risk": "low"})
    assert "never requested" in breach(
        requested, "approval.decided", {"approval_id": "a2", "decision": "approved", "by": "ann"})
    decided = run_of(("approval.requested", {"approval_id": "a1", "summary": "s", "risk": "low"}),
                     ("approval.decided", {"approval_id": "a1", "decision": "rejected", "by": "ann"}))
    assert "already decided (rejected)" in breach(
        decided, "approval.decided", {"approval_id": "a1", "decision": "approved", "by": "ann"})
    assert "unknown change_id 'c9'" in breach(
        run_of(), "approval.requested", {"approval_id": "a1", "summary": "s", "risk": "low",
                                         "change_id": "c9"})


def test_a_change_is_proposed_once_and_applied_once():
    proposed = run_of(("change.proposed", PROPOSE))
    assert "already proposed" in breach(proposed, "change.proposed", PROPOSE)
    assert "never proposed" in breach(run_of(), "change.applied", {"change_id": "c1"})
    applied = run_of(("change.proposed", PROPOSE), ("change.applied", {"change_id": "c1"}))
    assert "already applied" in breach(applied, "change.applied", {"change_id": "c1"})


@pytest.mark.parametrize("gate", ["policy", "approval request"])
def test_a_gated_change_is_applied_only_after_a_granted_approval(gate):
    if gate == "policy":
        steps = [("policy.evaluated", {"policy": "p", "action": "crm.discount",
                                       "decision": "require_approval", "reason": "r"}),
                 ("change.proposed", PROPOSE),
                 ("approval.requested", {"approval_id": "a1", "summary": "s", "risk": "high",
                                         "change_id": "c1"})]
    else:
        steps = [("change.proposed", PROPOSE),
                 ("approval.requested", {"approval_id": "a1", "summary": "s", "risk": "high",
                                         "change_id": "c1"})]
    waiting = run_of(*steps)
    assert "required approval" in breach(waiting, "change.applied", {"change_id": "c1"})
    rejected = run_of(*steps, ("approval.decided", {"approval_id": "a1", "decision": "rejected", "by": "ann"}))
    assert "required approval" in breach(rejected, "change.applied", {"change_id": "c1"})
    granted = run_of(*steps, ("approval.decided", {"approval_id": "a1", "decision": "approved", "by": "ann"}))
    granted.check(event(seq=granted.next_seq, etype="change.applied", data={"change_id": "c1"}))


def test_an_ungated_change_needs_no_approval():
    run_of(("change.proposed", PROPOSE), ("change.applied", {"change_id": "c1"}))


def test_only_an_applied_reversible_change_is_reverted_and_only_once():
    revert = {"change_id": "c1", "by": "ann"}
    assert "was not applied" in breach(run_of(("change.proposed", PROPOSE)), "change.reverted", revert)
    irreversible = run_of(("change.proposed", {**PROPOSE, "reversible": False}),
                          ("change.applied", {"change_id": "c1"}))
    assert "is irreversible" in breach(irreversible, "change.reverted", revert)
    applied = run_of(("change.proposed", PROPOSE), ("change.applied", {"change_id": "c1"}))
    assert applied.revert_refusal("c1") is None
    reverted = run_of(("change.proposed", PROPOSE), ("change.applied", {"change_id": "c1"}),
                      ("change.reverted", revert))
    assert "already reverted" in breach(reverted, "change.reverted", revert)


def test_a_completed_runs_change_can_still_be_asked_whether_it_may_be_undone():
    """The console undoes a completed run's change with a compensating run; it asks the same rule."""
    done = run_of(("change.proposed", PROPOSE), ("change.applied", {"change_id": "c1"}),
                  ("run.completed", {"outcome": "succeeded"}))
    assert done.revert_refusal("c1") is None
    assert "was not applied" in (done.revert_refusal("c2") or "")
    assert "after run.completed" in breach(done, "change.reverted", {"change_id": "c1", "by": "ann"})


def test_the_state_survives_its_stored_form():
    state = run_of(("policy.evaluated", {"policy": "p", "action": "deploy", "decision": "require_approval",
                                         "reason": "r"}),
                   ("change.proposed", PROPOSE), ("change.applied", {"change_id": "c1"}),
                   ("approval.requested", {"approval_id": "a1", "summary": "s", "risk": "low"}))
    assert RunState.from_bytes(state.to_bytes()) == state


def test_a_replay_remembers_the_run_it_replays_and_states_stored_before_that_field_still_load():
    replay = RunState("acme", "rp")
    start = event("rp", 0, "run.started", {"workflow": "wf", "mode": "execute", "risk_tier": "low",
                                           "replay_of": "r1"})
    replay.check(start)
    replay.apply(start, "h0")
    assert replay.replay_of == "r1"
    assert RunState.from_bytes(replay.to_bytes()) == replay
    plain = run_of(("approval.requested", {"approval_id": "a1", "summary": "s", "risk": "low"}))
    assert plain.replay_of is None and b'"ro"' not in plain.to_bytes()  # stored as before
    # a state stored by the version before replay_of, byte for byte
    old = (b'{"w":"acme","r":"r1","n":2,"h":"h1","c":false,"a":{"a1":"requested"},"ac":{},"ch":{},"g":[]}')
    assert RunState.from_bytes(old) == plain
