"""Webhook notifications: which entries notify, the body, the signature scheme, URL rules."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest

from api.routes.webhooks import Kind
from api.webhooks import (
    KINDS,
    MAX_TEXT,
    WebhookRequestError,
    check_kinds,
    check_url,
    notification_of,
    private_target,
    redacted,
    signature,
)
from tests.factories import event
from tests.harness.webhook_receiver import verify


def _entry(ev: dict[str, Any]) -> dict[str, Any]:
    return {"event": ev, "index": 7, "kind": "event", "log": "o", "received": "2026-01-01T00:00:00Z"}


def _record(rtype: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"index": 9, "kind": "record", "log": "o", "received": "2026-01-01T00:00:00Z",
            "record": {"type": rtype, "workspace": "acme", "time": "2026-01-01T00:00:05Z",
                       "actor": {"key_id": "k1", "role": "approver", "name": "Ada"}, "data": data,
                       "record_id": "record/9"}}


@pytest.mark.parametrize(("etype", "data", "kind", "fields"), [
    ("approval.requested", {"approval_id": "a1", "summary": "pay", "risk": "high"}, "approval.requested",
     {"approval_id": "a1", "summary": "pay", "risk": "high"}),
    ("budget.exceeded", {"limit": "tokens", "limit_value": 10, "observed": 12}, "budget.exceeded",
     {"limit": "tokens", "limit_value": 10, "observed": 12}),
    ("run.completed", {"outcome": "failed", "error": "boom", "result": {"x": 1}}, "run.failed",
     {"outcome": "failed", "error": "boom"}),
])
def test_each_event_kind_notifies_with_its_fields(etype: str, data: dict[str, Any], kind: str,
                                                  fields: dict[str, Any]) -> None:
    note = notification_of(7, _entry(event("r1", 3, etype, data)), decision_records=True)
    assert note is not None
    body = json.loads(note.body())
    assert body == {"id": "ntf_7", "kind": kind, "workspace": "acme", "run_id": "r1",
                    "time": "2026-01-01T00:00:03Z", "ledger_index": 7, "data": fields,
                    "source": {"entry": "event", "type": etype, "id": "r1-3", "seq": 3,
                               "agent": {"id": "agent", "version": "1.0"}}}


@pytest.mark.parametrize(("etype", "data"), [
    ("run.completed", {"outcome": "succeeded"}),
    ("run.completed", {"outcome": "cancelled"}),
    ("run.started", {"workflow": "wf", "mode": "execute", "risk_tier": "low"}),
    ("policy.evaluated", {"policy": "p", "action": "a", "decision": "deny", "reason": "r"}),
])
def test_other_events_do_not_notify(etype: str, data: dict[str, Any]) -> None:
    assert notification_of(1, _entry(event("r1", 1, etype, data)), decision_records=False) is None


def test_a_decision_comes_from_an_agents_event_only_until_the_platform_records_decisions() -> None:
    decided = _entry(event("r1", 2, "approval.decided", {"approval_id": "a1", "decision": "approved",
                                                          "by": "ada@example.com"}))
    before = notification_of(7, decided, decision_records=False)
    assert before is not None and before.kind == "approval.decided"
    assert before.data == {"approval_id": "a1", "decision": "approved", "by": "ada@example.com"}
    assert notification_of(7, decided, decision_records=True) is None  # the record notifies instead
    record = _record("approval.decision", {"approval_id": "a1", "run_id": "r1", "decision": "rejected"})
    note = notification_of(9, record, decision_records=True)
    assert note is not None and (note.kind, note.run_id, note.time) == ("approval.decided", "r1",
                                                                        "2026-01-01T00:00:05Z")
    assert note.data["decision"] == "rejected" and note.source["actor"]["name"] == "Ada"


def test_a_halt_set_record_notifies_and_other_records_do_not() -> None:
    note = notification_of(9, _record("halt.set", {"scope": "workflow", "target": "refunds"}), True)
    assert note is not None and note.kind == "halt.set" and note.run_id is None
    assert note.data == {"scope": "workflow", "target": "refunds"} and note.source["id"] == "record/9"
    assert notification_of(9, _record("audit.read", {"action": "runs.list"}), True) is None
    assert notification_of(9, _record("halt.cleared", {"scope": "workspace"}), True) is None


def test_long_free_text_is_cut_and_marked() -> None:
    ev = event("r1", 1, "approval.requested", {"approval_id": "a1", "summary": "x" * 10_000, "risk": "low"})
    note = notification_of(1, _entry(ev), True)
    assert note is not None and len(note.data["summary"]) < MAX_TEXT + 10
    assert note.data["summary"].endswith("[cut]")


def test_the_signature_is_hmac_sha256_over_the_timestamp_a_dot_and_the_body() -> None:
    body, secret, ts = b'{"id":"ntf_1"}', "whsec_abc", 1_767_225_600
    sig = signature(secret, ts, body)
    assert sig == "v1=" + __import__("hmac").new(b"whsec_abc", b"1767225600." + body, "sha256").hexdigest()
    assert verify(secret, str(ts), sig, body, now=ts + 10) is None  # the documented receiver check
    assert verify(secret, str(ts), sig, body + b" ", now=ts) == "signature mismatch"
    assert verify("whsec_other", str(ts), sig, body, now=ts) == "signature mismatch"
    assert verify(secret, str(ts - 1), sig, body, now=ts) == "signature mismatch"  # timestamp is signed
    assert verify(secret, str(ts), sig, body, now=ts + 301) == "timestamp too old or in the future (a replay?)"


@pytest.mark.parametrize(("url", "problem"), [
    ("ftp://example.com/x", "scheme must be http or https"),
    ("file:///etc/passwd", "scheme must be http or https"),
    ("https:///path", "no host"),
    ("https://user:pw@example.com/", "credentials"),
    ("https://example.com/#frag", "fragment"),
    ("https://example.com:99999/", "cannot be parsed"),
    ("https://exa mple.com/", "whitespace or control"),
    ("https://example.com/" + "a" * 2100, "at most 2048"),
    ("http://127.0.0.1:8080/hook", "private or local address"),
    ("http://[::1]/hook", "private or local address"),
    ("http://169.254.169.254/latest", "private or local address"),
    ("http://10.0.0.5/hook", "private or local address"),
    ("http://[::ffff:192.168.1.1]/", "private or local address"),
    ("http://localhost:9000/", "is this machine"),
])
def test_a_bad_webhook_url_is_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(WebhookRequestError, match=problem):
        check_url(url, allow_private=False)


def test_private_addresses_are_allowed_when_configured_and_public_urls_always() -> None:
    assert check_url("http://127.0.0.1:8080/hook", allow_private=True)
    assert check_url("https://hooks.example.com/tacho?team=ops", allow_private=False)
    assert check_url("http://93.184.216.34/x", allow_private=False)
    assert "TACHO_WEBHOOK_ALLOW_PRIVATE" in (private_target("127.0.0.1", resolve=True) or "")
    assert private_target("localhost.", resolve=True) is not None


def test_kinds_default_to_all_and_unknown_or_none_are_refused() -> None:
    assert check_kinds(None) == list(KINDS)
    assert check_kinds(["run.failed", "approval.requested"]) == ["approval.requested", "run.failed"]
    with pytest.raises(WebhookRequestError, match="unknown notification kind"):
        check_kinds(["run.completed"])
    with pytest.raises(WebhookRequestError, match="at least one"):
        check_kinds([])
    assert set(get_args(Kind)) == set(KINDS)  # the API's schema names the same kinds


def test_an_auditor_sees_a_url_cut_to_its_origin() -> None:
    assert redacted("https://hooks.example.com:8443/T000/secret-token?x=1") == "https://hooks.example.com:8443/…"
