"""OPA decision-log events -> contract events (docs/decisions/0006-opa-decision-logs.md).

OPA's ``decision_logs`` plugin POSTs gzip-compressed JSON arrays of decision events. Each
decision becomes one ``policy.evaluated`` event in a run per decision path and UTC day
(``opa.<path>.<YYYY-MM-DD>``, opened by a ``run.started``). Event ids derive from OPA's
``decision_id`` (``opa-<decision_id>``), so a retried upload is recognised and never duplicated.
Pure mapping: the caller supplies what the store already holds per run (:class:`RunCursor`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ingest.otlp import RunCursor
from tachograph.builder import envelope
from tachograph.contract.canonical import dumps

DECISIONS = ("allow", "deny", "require_approval")
MAX_REASON = 1000
MAX_DECISION_ID = 256
MAX_POLICY = 512
_IDENT = re.compile(r"^[A-Za-z0-9._:-]{1,120}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")
_FRACTION = re.compile(r"\.(\d+)")


class DecisionError(ValueError):
    """One decision event cannot be recorded (names the field)."""


@dataclass(frozen=True)
class Decision:
    """One OPA decision as read from its log event."""

    decision_id: str
    path: str
    time: str
    day: str
    data: dict[str, Any]
    opa_version: str
    opa_id: str | None


def run_id_for(path: str, day: str) -> str:
    """The run holding a decision path's decisions of one UTC day."""
    slug = _UNSAFE.sub(".", path.strip("/")).strip(".") or "query"
    if len(slug) > 96:
        slug = f"{slug[:72]}-{hashlib.sha256(path.encode()).hexdigest()[:16]}"
    return f"opa.{slug}.{day}"


def event_id_for(decision_id: str) -> str:
    """The deterministic ledger event id of a decision (the idempotency key of retries)."""
    if _IDENT.match(decision_id):
        return f"opa-{decision_id}"
    return f"opa-h-{hashlib.sha256(decision_id.encode()).hexdigest()}"


def _time(value: Any, now: Callable[[], float]) -> datetime:
    if value is None:
        return datetime.fromtimestamp(now(), UTC)
    if not isinstance(value, str):
        raise DecisionError("timestamp: must be an RFC 3339 string")
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value.strip(), count=1)
    try:
        parsed = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as e:
        raise DecisionError(f"timestamp: {value!r} is not RFC 3339") from e
    if parsed.tzinfo is None:
        raise DecisionError(f"timestamp: {value!r} has no time zone offset")
    return parsed.astimezone(UTC)


def _revision(event: Mapping[str, Any]) -> str | None:
    """The bundle revision(s) that decided: ``rev`` for one bundle, ``name=rev,...`` for several."""
    bundles = event.get("bundles")
    revs: dict[str, str] = {}
    if isinstance(bundles, Mapping):
        revs = {str(n): str(b["revision"]) for n, b in bundles.items()
                if isinstance(b, Mapping) and b.get("revision")}
    if not revs and isinstance(event.get("revision"), str) and event["revision"]:
        return str(event["revision"])[:512]  # OPA before 0.13's single-bundle field
    if not revs:
        return None
    if len(revs) == 1:
        return next(iter(revs.values()))[:512]
    return ",".join(f"{n}={r}" for n, r in sorted(revs.items()))[:512]


def _summary(value: Any) -> str:
    try:
        text = dumps(value).decode()
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def verdict(event: Mapping[str, Any]) -> tuple[str, str]:
    """(decision, reason) from a decision's result.

    ``{"decision", "reason"}`` results (the runtime's policies) are taken as they are; ``true`` /
    ``false`` and ``{"allow": bool}`` are allow / deny; an undefined result is deny (OPA's
    default-deny reading); any other value is recorded as allow with the value summarised.
    """
    if "result" not in event:
        return "deny", "undefined: the policy returned no result"
    result = event["result"]
    if isinstance(result, Mapping) and result.get("decision") in DECISIONS:
        reason = result.get("reason")
        return str(result["decision"]), (reason if isinstance(reason, str) else "")[:MAX_REASON]
    if isinstance(result, bool):
        return ("allow" if result else "deny"), f"result: {str(result).lower()}"
    if isinstance(result, Mapping) and isinstance(result.get("allow"), bool):
        return ("allow" if result["allow"] else "deny"), f"result: {_summary(result)}"
    return "allow", f"result (not a decision): {_summary(result)}"


def _action(event: Mapping[str, Any]) -> str:
    inp = event.get("input")
    if isinstance(inp, Mapping):
        for key in ("action", "tool", "target"):
            value = inp.get(key)
            if isinstance(value, str) and value:
                return value[:MAX_POLICY]
    return "evaluate"


def read_decision(event: Any, now: Callable[[], float]) -> Decision:
    """One decision log event, checked; :class:`DecisionError` names what is wrong."""
    if not isinstance(event, Mapping):
        raise DecisionError("decision event: must be a JSON object")
    decision_id = event.get("decision_id")
    if not isinstance(decision_id, str) or not decision_id:
        raise DecisionError("decision_id: missing (OPA sets one on every logged decision)")
    if len(decision_id) > MAX_DECISION_ID:
        raise DecisionError(f"decision_id: over {MAX_DECISION_ID} characters")
    path = event.get("path") or event.get("query") or "query"
    if not isinstance(path, str):
        raise DecisionError("path: must be a string")
    when = _time(event.get("timestamp"), now)
    decision, reason = verdict(event)
    data: dict[str, Any] = {"policy": path[:MAX_POLICY], "action": _action(event),
                            "decision": decision, "reason": reason, "decision_id": decision_id}
    revision = _revision(event)
    if revision:
        data["revision"] = revision
    raw_labels = event.get("labels")
    labels: Mapping[str, Any] = raw_labels if isinstance(raw_labels, Mapping) else {}
    version = str(labels["version"]) if isinstance(labels.get("version"), str) else "unknown"
    opa_id = str(labels["id"]) if isinstance(labels.get("id"), str) else None
    return Decision(decision_id, path, when.isoformat().replace("+00:00", "Z"),
                    when.date().isoformat(), data, version[:256] or "unknown", opa_id)


def _started(first: Decision) -> dict[str, Any]:
    labels = {"source": "opa", "opa.path": first.path[:256], "opa.day": first.day}
    if first.opa_id:
        labels["opa.id"] = first.opa_id[:256]
    return {"workflow": first.path[:MAX_POLICY] or "query", "mode": "execute", "risk_tier": "low",
            "labels": labels}


def events_for_run(
    decisions: Sequence[Decision], workspace: str, run_id: str, cursor: RunCursor,
) -> tuple[list[dict[str, Any]], int]:
    """The new events of one run from its decisions, and how many were already stored.

    Seq continues after ``cursor.next_seq``; a decision whose event id is stored is skipped.
    """
    out: list[dict[str, Any]] = []
    seq, dup = cursor.next_seq, 0
    for d in decisions:
        eid = event_id_for(d.decision_id)
        if eid in cursor.event_ids:
            dup += 1
            continue
        agent = {"id": "opa", "version": d.opa_version}
        if seq == 0:
            out.append(envelope(workspace=workspace, run_id=run_id, seq=0, etype="run.started",
                                time=d.time, agent=agent, data=_started(d),
                                event_id=f"opa-run-{hashlib.sha256(run_id.encode()).hexdigest()[:40]}"))
            seq = 1
        out.append(envelope(workspace=workspace, run_id=run_id, seq=seq, etype="policy.evaluated",
                            time=d.time, agent=agent, data=d.data, event_id=eid))
        cursor.event_ids.add(eid)
        seq += 1
    cursor.next_seq = seq
    return out, dup
