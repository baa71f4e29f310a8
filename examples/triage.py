"""Ticket triage: classify a support ticket; refunds above a threshold need a person's approval.

Run live with ``tachograph.connect(...).run("examples.triage:triage", {...})`` and replay with
``tacho replay --agent examples.triage:triage``.

Under a policy engine (the runtime asks OPA before every action: ``TACHO_OPA_URL``), the refund
is the policy's to judge (``examples/policies/refunds`` is the one ``make demo`` runs): the
runtime denies it or asks a person, and a denial reaches this code as ``PolicyDenied``. Without
one, the agent applies its own thresholds and records its decision with ``ctx.policy``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tachograph import Context, PolicyDenied, ToolRegistry

WORKFLOW = "ticket-triage"
AGENT = {"id": "triage-agent", "version": "3.0.0"}
REFUND_APPROVAL_ABOVE = Decimal("100")
REFUND_DENY_ABOVE = Decimal("1000")
CATEGORIES = ("refund", "billing", "technical", "account")

PROMPTS = {
    "triage.system": "You are a support triage assistant. Answer with the category only.",
    "triage.reply": "Write a short, friendly first reply to the customer.",
}

TOOLS = ToolRegistry()
ISSUED_REFUNDS: list[dict[str, Any]] = []  # the "payment system" the live refund tool writes to


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def crm_lookup(args: Mapping[str, Any]) -> dict[str, Any]:
    """The customer's tier and open tickets (a deterministic stand-in CRM)."""
    n = _h(str(args["customer"]))
    return {"customer": args["customer"], "tier": ("free", "pro", "gold")[n % 3], "open_tickets": n % 4}


def kb_search(args: Mapping[str, Any]) -> dict[str, Any]:
    """Knowledge-base articles for a query (pure function of the query)."""
    words = sorted({w for w in str(args["query"]).lower().split() if len(w) > 4})[:3]
    return {"articles": [f"kb/{w}" for w in words]}


def refund_issue(args: Mapping[str, Any]) -> dict[str, Any]:
    """Issue a refund (a write: appends to the payment system)."""
    refund = {"refund_id": f"rf-{len(ISSUED_REFUNDS) + 1}", "ticket": args["ticket"], "amount": args["amount"]}
    ISSUED_REFUNDS.append(refund)
    return refund


def refund_dry_run(args: Mapping[str, Any]) -> dict[str, Any]:
    """What refund.issue would return, without issuing anything."""
    return {"refund_id": "simulated", "ticket": args["ticket"], "amount": args["amount"]}


TOOLS.register("crm.lookup", crm_lookup, "read", simulator=crm_lookup)
TOOLS.register("kb.search", kb_search, "none")
TOOLS.register("refund.issue", refund_issue, "write", simulator=refund_dry_run)


def triage(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Classify the ticket, refund small amounts, ask a person above the threshold."""
    customer = ctx.tool("crm.lookup", {"customer": input["customer"]})
    governed = _judged_by_policy_engine(ctx)
    kb = ctx.tool("kb.search", {"query": input["text"]})
    reply = ctx.llm(
        [
            {"role": "system", "content": ctx.prompt("triage.system")},
            {
                "role": "user",
                "content": f"Ticket {input['ticket']} from a {customer['tier']} customer:\n"
                f"{input['text']}\nCHOOSE: {' | '.join(CATEGORIES)}",
            },
        ]
    )
    category = reply.content.strip()
    if category not in CATEGORIES:
        return {"outcome": "escalated", "category": None, "why": "model gave no category"}
    if category != "refund":
        draft = ctx.llm(
            [
                {"role": "system", "content": ctx.prompt("triage.reply")},
                {"role": "user", "content": f"{category} ticket: {input['text']} (see {kb['articles']})"},
            ]
        )
        return {"category": category, "replied": bool(draft.content)}
    amount = Decimal(str(input.get("amount", 0)))
    if governed:
        return _refund_under_policy(ctx, input["ticket"], amount)
    if amount > REFUND_DENY_ABOVE:
        decision = "deny"
        reason = f"refund {amount} over the {REFUND_DENY_ABOVE} limit"
    elif amount > REFUND_APPROVAL_ABOVE:
        decision = "require_approval"
        reason = f"refund {amount} over {REFUND_APPROVAL_ABOVE} needs a person"
    else:
        decision, reason = "allow", "small refund"
    ctx.policy("refunds.threshold", "refund.issue", decision, reason)
    if decision == "deny":
        return {"outcome": "escalated", "category": "refund", "refund": "denied"}
    change = ctx.propose_change(
        "refund.issue", {"refunded": "0"}, {"refunded": str(amount)}, reversible=False
    )
    if decision == "require_approval":
        risk = "high" if customer["tier"] == "free" else "medium"
        if not ctx.request_approval(f"refund {amount} USD on {input['ticket']}", risk, change):
            return {"outcome": "escalated", "category": "refund", "refund": "rejected"}
    issued = ctx.tool("refund.issue", {"ticket": input["ticket"], "amount": str(amount)})
    ctx.apply_change(change)
    return {"category": "refund", "refund": issued["refund_id"] != "", "amount": str(amount)}


def _judged_by_policy_engine(ctx: Context) -> bool:
    """Whether the runtime asks a policy engine about this run's actions: it recorded one's
    decision on the tool call just made (``policy.evaluated`` naming it, then ``tool.called``).
    A replay repeats the recorded events, so it takes the same path."""
    if len(ctx.events) < 2:
        return False
    asked, called = ctx.events[-2], ctx.events[-1]
    return bool(asked["type"] == "policy.evaluated" and called["type"] == "tool.called"
                and asked["data"]["action"] == called["data"]["tool"])


def _refund_under_policy(ctx: Context, ticket: str, amount: Decimal) -> dict[str, Any]:
    """Issue the refund as the policy engine allows: the runtime asks it before ``refund.issue``
    (and waits for a person when it says so); denied or not approved, the refund never happens."""
    change = ctx.propose_change("refund.issue", {"refunded": "0"}, {"refunded": str(amount)}, reversible=False)
    try:
        issued = ctx.tool("refund.issue", {"ticket": ticket, "amount": str(amount)})
    except PolicyDenied as e:
        refused = "denied" if e.decision == "deny" else "rejected"
        return {"outcome": "escalated", "category": "refund", "refund": refused, "why": e.reason}
    ctx.apply_change(change)
    return {"category": "refund", "refund": issued["refund_id"] != "", "amount": str(amount)}


TEXTS = (
    "I was charged twice this month, please refund the second payment",
    "The app crashes when I open settings, technical problem since the update",
    "Please change the email on my account",
    "My invoice shows the wrong billing address",
    "I want a refund for the annual plan I did not use",
    "Password reset link does not work, account locked",
    "Billing page shows a currency I did not choose",
    "Sync fails with a technical error code 504",
)


REFUND_REQUESTS = ("45", "240", "1250", "80", "760")
"""What every third example ticket asks to have refunded, in turn (USD): within the refund policy's
thresholds, above the one for a person's approval, above the one for a denial, and two that a
stricter policy (``examples/policies/refunds-stricter``) judges differently."""


def inputs(n: int, salt: str = "") -> list[dict[str, Any]]:
    """``n`` deterministic example tickets; every third one asks for a refund of an amount from
    :data:`REFUND_REQUESTS` (the same whatever ``salt``), the others vary with ``salt``."""
    out = []
    for i in range(n):
        h = _h(f"{salt}{i}")
        if i % 3 == 0:
            k = i // 3
            amount = REFUND_REQUESTS[k % len(REFUND_REQUESTS)]
            out.append({"ticket": f"T-{1000 + i}", "customer": f"C-{k % 97}", "amount": amount,
                        "text": f"Please refund {amount} USD: I was charged twice for the same order"})
            continue
        out.append({
            "ticket": f"T-{1000 + i}",
            "customer": f"C-{h % 97}",
            "text": TEXTS[h % len(TEXTS)],
            "amount": str((h // 7) % 400 + 5),
        })
    return out
