"""Kill switches: durable per workflow, with who and when, and what the SDK check sees."""

from __future__ import annotations

import os

import pytest

from api.console.kill_switch import KillSwitchError, KillSwitches, is_halted, switches_path
from tests.factories import FakeClock


def test_a_halted_workflow_is_seen_by_is_halted_until_resumed_and_survives_a_reopen(tmp_path):
    clock = FakeClock(1_800_000_000.0)
    switches = KillSwitches(switches_path(tmp_path), clock)
    assert is_halted(tmp_path, "acme", "refunds") is None
    switches.flip("acme", "refunds", True, "Ari Admin (apikey:abc)", "misfiring", ledger_index=41)
    switches.close()

    state = is_halted(tmp_path, "acme", "refunds")
    assert state is not None and state.halted and state.by == "Ari Admin (apikey:abc)"
    assert state.at == "2027-01-15T08:00:00Z" and state.ledger_index == 41
    assert "misfiring" in state.refusal()
    assert is_halted(tmp_path, "other", "refunds") is None
    assert is_halted(tmp_path, "acme", "triage") is None

    reopened = KillSwitches(switches_path(tmp_path), clock)
    clock.advance(60)
    reopened.flip("acme", "refunds", False, "Eli Engineer (apikey:def)", "fixed")
    assert is_halted(tmp_path, "acme", "refunds") is None
    history = reopened.history("acme")
    assert [(h.halted, h.by) for h in history] == [(False, "Eli Engineer (apikey:def)"),
                                                   (True, "Ari Admin (apikey:abc)")]
    assert os.stat(switches_path(tmp_path)).st_mode & 0o077 == 0


def test_is_halted_answers_none_when_no_switch_file_exists(tmp_path):
    assert is_halted(tmp_path / "nowhere", "acme", "refunds") is None


@pytest.mark.parametrize(("workflow", "reason", "needle"), [
    ("", "why", "workflow name"), ("refunds", "  ", "reason"), ("w" * 513, "why", "workflow name"),
])
def test_a_flip_without_a_workflow_or_a_reason_is_refused_and_changes_nothing(tmp_path, workflow, reason, needle):
    switches = KillSwitches(switches_path(tmp_path), FakeClock())
    with pytest.raises(KillSwitchError, match=needle):
        switches.flip("acme", workflow, True, "someone", reason)
    assert switches.switches("acme") == [] and switches.history("acme") == []
