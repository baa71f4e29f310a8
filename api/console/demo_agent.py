"""The console demo's agent: billing operations (``billing-ops``) for people to act on in the console.

Agent code over the run context, run by ``tacho demo`` through the agent runtime
(``api/console/demo.py``): :func:`raise_credit_limit` asks a person before it raises a customer's
credit limit; :func:`void_invoice` voids an invoice (a reversible change), then asks a person
whether to send the customer a credit note. The tools are stand-ins for a CRM and a billing
system (pure functions of their arguments).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tachograph import Context, ToolRegistry

WORKFLOW = "billing-ops"
AGENT = {"id": "billing-agent", "version": "3.1.0"}
CURRENT_LIMIT = 500

PROMPTS = {"credit.review": "You review credit-limit requests. Answer with one short sentence."}

TOOLS = ToolRegistry()


def invoice_get(args: Mapping[str, Any]) -> dict[str, Any]:
    """An open invoice of 120.00 USD."""
    return {"invoice": args["invoice"], "status": "open", "amount": "120.00"}


def invoice_void(args: Mapping[str, Any]) -> dict[str, Any]:
    """Void an invoice (a write in the billing system)."""
    return {"invoice": args["invoice"], "status": "void"}


def credit_limit_set(args: Mapping[str, Any]) -> dict[str, Any]:
    """Set a customer's credit limit (a write in the CRM)."""
    return {"customer": args["customer"], "credit_limit": args["credit_limit"]}


def credit_note_send(args: Mapping[str, Any]) -> dict[str, Any]:
    """Send the customer a credit note (a write: an email leaves)."""
    return {"invoice": args["invoice"], "amount": args["amount"], "sent": True}


TOOLS.register("billing.invoice.get", invoice_get, "read", simulator=invoice_get)
TOOLS.register("billing.invoice.void", invoice_void, "write")
TOOLS.register("crm.credit_limit.set", credit_limit_set, "write")
TOOLS.register("billing.credit_note.send", credit_note_send, "write")


def raise_credit_limit(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Raise a customer's credit limit once a person approves (every raise needs one)."""
    customer, amount = input["customer"], int(input["credit_limit"])
    target = f"crm.customer/{customer}"
    ctx.llm([
        {"role": "system", "content": ctx.prompt("credit.review")},
        {"role": "user", "content": f"Customer {customer} asks for a credit limit of {amount} USD "
                                    f"(now {CURRENT_LIMIT})."},
    ])
    ctx.policy("credit-limit", target, "require_approval", f"raise over $1,000 (to ${amount})",
               risk_score=Decimal("0.7"))
    change = ctx.propose_change(target, {"credit_limit": CURRENT_LIMIT, "tier": "silver"},
                                {"credit_limit": amount, "tier": "silver"})
    if not ctx.request_approval(f"raise the credit limit of customer {customer} to {amount}",
                                input.get("risk", "medium"), change):
        return {"outcome": "escalated", "raised": False}
    ctx.tool("crm.credit_limit.set", {"customer": customer, "credit_limit": amount})
    ctx.apply_change(change)
    return {"raised": True, "credit_limit": amount}


def void_invoice(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Void an invoice (reversible), then send a credit note if a person agrees."""
    invoice = input["invoice"]
    found = ctx.tool("billing.invoice.get", {"invoice": invoice})
    change = ctx.propose_change(f"billing.invoice/{invoice}",
                                {"status": found["status"], "amount": found["amount"]},
                                {"status": "void", "amount": found["amount"]}, reversible=True)
    ctx.tool("billing.invoice.void", {"invoice": invoice})
    ctx.apply_change(change)
    if not ctx.request_approval(f"send the customer a credit note for {invoice} ({found['amount']} USD)", "low"):
        return {"voided": invoice, "credit_note": False}
    ctx.tool("billing.credit_note.send", {"invoice": invoice, "amount": found["amount"]})
    return {"voided": invoice, "credit_note": True}
