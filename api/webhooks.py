"""Webhook notifications: which ledger entries notify, the body sent, its signature, URL rules.

The scheme (documented for receivers in ``docs/webhooks.md``): each delivery is a POST of the
notification's JSON body with ``Tacho-Timestamp: <unix seconds of this attempt>`` and
``Tacho-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``; the secret is the
whole ``whsec_...`` text the server showed once when the endpoint was created.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from api.routes.errors import BadParameter
from domain.records import RECORD_TYPES
from tachograph.contract.canonical import dumps

KINDS: dict[str, str] = {
    "approval.requested": "an agent asked a person to approve something (event approval.requested)",
    "approval.decided": "a person approved or rejected (platform record approval.decision)",
    "halt.set": "a kill switch was set (platform record halt.set)",
    "budget.exceeded": "a run crossed one of its budgets (event budget.exceeded)",
    "run.failed": "a run completed with outcome failed (event run.completed)",
}
DECISION_RECORD = "approval.decision"
HALT_RECORD = "halt.set"
_EVENT_KINDS = {
    "approval.requested": "approval.requested",
    "budget.exceeded": "budget.exceeded",
    "run.completed": "run.failed",
    "approval.decided": "approval.decided",  # only while no approval.decision record type exists
}
_EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "approval.requested": ("approval_id", "summary", "risk", "change_id"),
    "approval.decided": ("approval_id", "decision", "by", "reason"),
    "budget.exceeded": ("limit", "limit_value", "observed"),
    "run.failed": ("outcome", "error"),
}
_RECORD_KINDS = {DECISION_RECORD: "approval.decided", HALT_RECORD: "halt.set"}
MAX_TEXT = 4096
"""Longest free text (summary, reason, error) copied into a body; longer text is cut and marked."""

SECRET_PREFIX = "whsec_"
TIMESTAMP_HEADER = "Tacho-Timestamp"
SIGNATURE_HEADER = "Tacho-Signature"
ID_HEADER = "Tacho-Notification-Id"
ATTEMPT_HEADER = "Tacho-Delivery-Attempt"
MAX_URL = 2048
MAX_DESCRIPTION = 200


class WebhookRequestError(BadParameter):
    """A webhook endpoint request is invalid: bad URL, unknown kind, too many endpoints (HTTP 422)."""


def decisions_from_records() -> bool:
    """Whether decisions come from ``approval.decision`` records (once that type exists) rather
    than from agents' ``approval.decided`` events (before it did)."""
    return DECISION_RECORD in RECORD_TYPES


def wanted(kind: str, entry_type: str | None, decision_records: bool) -> bool:
    """Whether a ledger entry of this kind and type may notify (from its columns, unparsed)."""
    if kind == "record":
        return entry_type in _RECORD_KINDS
    if kind != "event" or entry_type not in _EVENT_KINDS:
        return False
    return not (entry_type == "approval.decided" and decision_records)


@dataclass(frozen=True)
class Notification:
    """One thing to tell a workspace's endpoints about, made from one ledger entry."""

    id: str
    kind: str
    workspace: str
    run_id: str | None
    time: str
    ledger_index: int
    data: Mapping[str, Any]
    source: Mapping[str, Any]

    def body(self) -> bytes:
        """The JSON body every endpoint receives (the same bytes on every attempt)."""
        return dumps({"id": self.id, "kind": self.kind, "workspace": self.workspace,
                      "run_id": self.run_id, "time": self.time, "ledger_index": self.ledger_index,
                      "data": dict(self.data), "source": dict(self.source)})


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "…[cut]"
    return value


def notification_of(index: int, entry: Mapping[str, Any], decision_records: bool) -> Notification | None:
    """The notification a parsed ledger entry makes, if any."""
    nid = f"ntf_{index}"
    if entry.get("kind") == "record":
        rec = entry["record"]
        rkind = _RECORD_KINDS.get(rec["type"])
        if rkind is None:
            return None
        data = {k: _clip(v) for k, v in rec["data"].items()}
        run_id = data.get("run_id")
        source = {"entry": "record", "type": rec["type"], "id": rec["record_id"], "actor": rec["actor"]}
        return Notification(nid, rkind, rec["workspace"], run_id if isinstance(run_id, str) else None,
                            rec["time"], index, data, source)
    ev = entry.get("event")
    if not isinstance(ev, Mapping) or not wanted("event", ev.get("type"), decision_records):
        return None
    kind = _EVENT_KINDS[ev["type"]]
    if kind == "run.failed" and ev["data"].get("outcome") != "failed":
        return None
    data = {k: _clip(ev["data"][k]) for k in _EVENT_FIELDS[kind] if k in ev["data"]}
    source = {"entry": "event", "type": ev["type"], "id": ev["event_id"], "seq": ev["seq"],
              "agent": ev["agent"]}
    return Notification(nid, kind, ev["workspace"], ev["run_id"], ev["time"], index, data, source)


def new_secret() -> str:
    """A fresh signing secret (256 bits), shown once to whoever created the endpoint."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Tacho-Signature`` value: ``v1=`` and hex HMAC-SHA256 over ``"<timestamp>." + body``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def check_kinds(kinds: list[str] | None) -> list[str]:
    """The kinds an endpoint asks for (all when none are named), each known, in a stable order."""
    if kinds is None:
        return list(KINDS)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise WebhookRequestError(f"unknown notification kind(s) {unknown}; known: {', '.join(KINDS)}")
    if not kinds:
        raise WebhookRequestError(f"name at least one notification kind of: {', '.join(KINDS)}")
    return [k for k in KINDS if k in kinds]


def _private(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allow_private: bool) -> str:
    """``url`` if it may be a webhook endpoint (http/https, a host, no credentials, bounded)."""
    if len(url) > MAX_URL:
        raise WebhookRequestError(f"webhook URL is {len(url)} characters; at most {MAX_URL}")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise WebhookRequestError("webhook URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
    except ValueError as e:
        raise WebhookRequestError(f"webhook URL {url!r} cannot be parsed: {e}") from e
    if parts.scheme not in ("http", "https"):
        raise WebhookRequestError(f"webhook URL scheme must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise WebhookRequestError("webhook URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRequestError("webhook URL must not carry credentials (user:password@)")
    if parts.fragment:
        raise WebhookRequestError("webhook URL must not have a #fragment")
    if not allow_private:
        refusal = private_target(parts.hostname, resolve=False)
        if refusal:
            raise WebhookRequestError(refusal)
    return url


def private_target(host: str, resolve: bool) -> str | None:
    """Why ``host`` is a private target (loopback, private, link-local...), or None.

    Without ``resolve`` only IP literals and ``localhost`` names are judged (at creation); with it
    every address the name resolves to is (before each delivery).
    """
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return f"webhook host {host!r} is this machine; set TACHO_WEBHOOK_ALLOW_PRIVATE=1 to allow it"
    try:
        addrs = [name] if _is_ip(name) else []
        if not addrs and resolve:
            addrs = sorted({str(info[4][0]) for info in socket.getaddrinfo(name, None)})
    except OSError as e:
        return f"webhook host {host!r} does not resolve: {e}"
    bad = [a for a in addrs if _private(a)]
    if bad:
        return (f"webhook host {host!r} is a private or local address ({', '.join(bad)}); "
                "set TACHO_WEBHOOK_ALLOW_PRIVATE=1 to allow it")
    return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def redacted(url: str) -> str:
    """The URL without its path and query (which may hold a token): for readers who are not admins."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"
