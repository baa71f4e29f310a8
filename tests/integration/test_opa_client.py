"""The runtime's OPA client against a real Open Policy Agent (built by the harness).

The policy is tests/policies/refunds.rego, served as a bundle directory whose ``.manifest``
carries the revision; OPA runs with console decision logging, so it returns decision ids.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tachograph.errors import PolicyResponseError, PolicyUnavailableError
from tachograph.policy import OpaClient, PolicyDecision

pytestmark = pytest.mark.opa

POLICIES = Path(__file__).resolve().parents[1] / "policies"
REVISION = "refunds-2024-06-01"


@pytest.fixture
def refunds_bundle(tmp_path: Path) -> Path:
    """A bundle directory: refunds.rego and a manifest with a revision, owning ``tachograph``."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(POLICIES / "refunds.rego", bundle / "refunds.rego")
    (bundle / ".manifest").write_text(json.dumps({"revision": REVISION, "roots": ["tachograph"]}))
    return bundle


@pytest.fixture
def opa(opa_server, refunds_bundle):
    return opa_server(bundle=refunds_bundle)


def refund(amount: object) -> dict[str, object]:
    return {"workspace": "ws-acme", "workflow": "support", "tool": "refund",
            "arguments": {"amount": amount, "order": "o-1"}}


def test_small_refund_is_allowed_with_the_bundle_revision_and_a_decision_id(opa):
    with OpaClient(opa.url) as client:
        d = client.decide(refund(40))
    assert d.result == "allow"
    assert d.reason == "refund of 40 is within 100"
    assert d.revision == REVISION
    assert d.decision_id and len(d.decision_id) >= 16


def test_refund_above_the_approval_threshold_requires_approval(opa):
    with OpaClient(opa.url) as client:
        d = client.decide(refund(250))
    assert (d.result, d.revision) == ("require_approval", REVISION)
    assert "a person must approve it" in d.reason


def test_refund_above_the_limit_is_denied(opa):
    with OpaClient(opa.url) as client:
        d = client.decide(refund(5000))
    assert (d.result, d.reason) == ("deny", "refund of 5000 is above the limit of 1000")


def test_decimal_amounts_reach_opa_exactly(opa):
    with OpaClient(opa.url) as client:
        just_over = client.decide(refund(Decimal("100.01")))
        at = client.decide(refund(Decimal("100.00")))
    assert just_over.result == "require_approval"
    assert at.result == "allow"


def test_every_decision_has_its_own_id(opa):
    with OpaClient(opa.url) as client:
        ids = {client.decide(refund(10)).decision_id for _ in range(3)}
    assert len(ids) == 3 and None not in ids


def test_other_actions_fall_to_the_default(opa):
    with OpaClient(opa.url) as client:
        d = client.decide({"workspace": "ws-acme", "tool": "lookup_order", "arguments": {}})
    assert d == PolicyDecision("allow", "no policy restricts this action", d.decision_id, REVISION)


def test_opa_stopped_is_unavailable_quickly_and_answers_again_once_restarted(opa):
    client = OpaClient(opa.url, timeout_s=1.0)
    assert client.decide(refund(10)).result == "allow"
    opa.stop()
    t0 = time.monotonic()
    with pytest.raises(PolicyUnavailableError, match="unreachable"):
        client.decide(refund(10))
    assert time.monotonic() - t0 < 1.5
    opa.restart()
    assert client.decide(refund(2000)).result == "deny"
    client.close()


def test_a_hung_opa_times_out_within_the_bound(opa):
    client = OpaClient(opa.url, timeout_s=0.5)
    client.decide(refund(10))  # a kept-alive connection, then OPA stops answering
    os.kill(opa.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(PolicyUnavailableError, match=r"did not answer within 0\.5s"):
            client.decide(refund(10))
        assert time.monotonic() - t0 < 1.5
    finally:
        os.kill(opa.proc.pid, signal.SIGCONT)
    assert client.decide(refund(10)).result == "allow"
    client.close()


def test_a_malformed_decision_is_a_clear_error(opa_server, tmp_path):
    rego = tmp_path / "broken.rego"
    rego.write_text(
        "package broken\n\n"
        'decision := {"decision": "maybe", "reason": "unsure"}\n\n'
        'no_reason := {"decision": "allow"}\n\n'
        'bare := "allow"\n'
    )
    server = opa_server(paths=[rego])
    with pytest.raises(PolicyResponseError, match=r"data\.broken\.decision\.decision must be one of "
                       r"allow, deny, require_approval, not 'maybe'"):
        OpaClient(server.url, "broken/decision").decide(refund(1))
    with pytest.raises(PolicyResponseError, match=r"data\.broken\.no_reason\.reason must be a "
                       r"non-empty string, not None"):
        OpaClient(server.url, "broken/no_reason").decide(refund(1))
    with pytest.raises(PolicyResponseError, match=r"data\.broken\.bare must be an object"):
        OpaClient(server.url, "broken/bare").decide(refund(1))


def test_an_undefined_rule_is_a_clear_error(opa_server, tmp_path):
    rego = tmp_path / "partial.rego"
    rego.write_text('package partial\n\ndecision := {"decision": "allow", "reason": "ok"} if '
                    'input.tool == "lookup"\n')
    server = opa_server(paths=[rego])
    client = OpaClient(server.url, "partial/decision")
    assert client.decide({"tool": "lookup"}).revision is None  # not a bundle: no revision
    with pytest.raises(PolicyResponseError, match=r"data\.partial\.decision is undefined"):
        client.decide({"tool": "refund"})


def test_bad_paths_and_inputs_are_refused_before_asking():
    with pytest.raises(ValueError, match="not a rule path"):
        OpaClient("http://127.0.0.1:1", "tachograph/../system")
    with pytest.raises(TypeError, match="must be a mapping"):
        OpaClient("http://127.0.0.1:1").decide([1, 2])  # type: ignore[arg-type]
