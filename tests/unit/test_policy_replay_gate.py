"""The what-if policy replay's gate syntax (counts vs rates) and decision classification."""

from __future__ import annotations

from decimal import Decimal

import pytest

from replay.errors import PolicyReplayError
from replay.policy_replay import PolicyGate, Threshold, classify
from tachograph.policy import policy_input


@pytest.mark.parametrize(("text", "count", "rate"), [
    ("0", 0, None), ("3", 3, None), ("5%", None, Decimal("0.05")), ("0.05", None, Decimal("0.05")),
    ("100%", None, Decimal(1)), ("1.0", None, Decimal(1)),
])
def test_thresholds_are_counts_or_rates(text, count, rate):
    t = Threshold.parse(text, "--max-new-denials")
    assert (t.count, t.rate) == (count, rate)


@pytest.mark.parametrize("text", ["lots", "-1", "150%", "1.5", "", "nan%", "2e"])
def test_bad_thresholds_are_named(text):
    with pytest.raises(PolicyReplayError, match="--max-new-denials must be a count"):
        Threshold.parse(text, "--max-new-denials")


def test_gate_counts_and_rates():
    totals = {"evaluated": 20, "new_denials": 2, "new_approvals": 1}
    assert PolicyGate(Threshold.parse("2", "x"), Threshold.parse("5%", "y")).failures(totals) == []
    failures = PolicyGate(Threshold.parse("1", "x"), Threshold.parse("0.04", "y")).failures(totals)
    assert failures == ["new denials: 2 of 20 actions (0.1000) is over the limit 1",
                        "actions newly needing approval: 1 of 20 actions (0.0500) is over the limit 4%"]
    assert PolicyGate(Threshold.parse("0%", "x")).failures({"evaluated": 0, "new_denials": 0,
                                                            "new_approvals": 0}) == []


def test_classify():
    assert classify("allow", "allow") == "unchanged"
    assert classify("allow", "deny") == classify("require_approval", "deny") == "new_denials"
    assert classify("allow", "require_approval") == classify("deny", "require_approval") == "new_approvals"
    assert classify("require_approval", "allow") == "new_allows"


def test_policy_input_names_the_tool_or_the_target():
    base = dict(workspace="w", workflow="f", run_id="r", agent={"id": "a"}, mode="execute",
                risk_tier="low", arguments={"x": 1}, side_effect="read", limits={},
                used={"model_calls": 0})
    assert policy_input(kind="tool", name="lookup", **base)["tool"] == "lookup"
    assert policy_input(kind="change", name="price", **base)["target"] == "price"
    with pytest.raises(ValueError, match="kind must be"):
        policy_input(kind="other", name="x", **base)
