"""A stand-alone agent process: records its run over HTTP, waits for a person's decision, goes on.

Run as ``python approval_agent.py URL KEY WORKSPACE RUN_ID APPROVAL_ID TIMEOUT_S [--forge]``.
It shares nothing with the platform but HTTP (only httpx and the standard library): it posts
``run.started`` and ``approval.requested`` with a publisher key, long-polls
``GET /v1/approvals/{id}?wait=`` until a person decided (or the approval expired), then records
its own ``approval.decided`` repeating the decision and ``run.completed``. With ``--forge`` it
first posts an ``approval.decided`` that no person made. Prints one JSON object per line.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx


def say(step: str, **facts: Any) -> None:
    print(json.dumps({"step": step, "at": time.time(), **facts}), flush=True)


def segment(value: str) -> str:
    """The id as one URL path segment: every reserved character and every dot encoded."""
    return quote(value, safe="").replace(".", "%2E")


def main(argv: list[str]) -> int:
    url, key, workspace, run_id, approval_id, timeout = argv[:6]
    forge = "--forge" in argv
    headers = {"Authorization": f"Bearer {key}"}
    client = httpx.Client(base_url=url, headers=headers, timeout=60)
    seq = 0

    def emit(etype: str, data: dict[str, Any]) -> dict[str, Any]:
        nonlocal seq
        event = {
            "spec": "tachograph.event/1", "event_id": f"{run_id}.{seq}.{etype}", "workspace": workspace,
            "run_id": run_id, "seq": seq, "type": etype,
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "agent": {"id": "approval-agent", "version": "1"}, "data": data,
        }
        r = client.post("/v1/events", json=[event])
        r.raise_for_status()
        result: dict[str, Any] = r.json()["results"][0]
        say("posted", type=etype, status=result["status"], reason=result["reason"])
        if result["status"] == "accepted":
            seq += 1
        return result

    emit("run.started", {"workflow": "credit-limits", "mode": "execute", "risk_tier": "high"})
    emit("approval.requested", {"approval_id": approval_id, "risk": "high", "timeout_s": float(timeout),
                                "summary": f"raise the credit limit ({run_id})"})
    if forge:
        emit("approval.decided", {"approval_id": approval_id, "decision": "approved",
                                  "by": "nobody@example.test"})
    say("waiting")
    give_up = time.monotonic() + 90
    while True:
        r = client.get(f"/v1/approvals/{segment(approval_id)}", params={"wait": 30})
        r.raise_for_status()
        approval = r.json()
        if approval["status"] != "pending":
            break
        if time.monotonic() > give_up:
            say("gave-up")
            return 1
    say("resumed", status=approval["status"], decided_by=approval["decided_by"],
        approval_id=approval["approval_id"])
    if approval["status"] in ("approved", "rejected"):
        data = {"approval_id": approval_id, "decision": approval["status"], "by": approval["decided_by"]}
        if approval["reason"]:
            data["reason"] = approval["reason"]
        emit("approval.decided", data)
    outcome = {"approved": "succeeded", "rejected": "cancelled", "expired": "escalated"}[approval["status"]]
    done = emit("run.completed", {"outcome": outcome})
    say("done", outcome=outcome, status=done["status"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
