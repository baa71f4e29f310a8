"""Invoice matching: compare an invoice with its purchase order and post it to the ERP (a write).

``erp.post`` has side effects and no simulator: a what-if replay that wants to post an invoice
the recording did not post stops there instead of touching the ERP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tachograph import Context, ToolRegistry

WORKFLOW = "invoice-matching"
AGENT = {"id": "ap-agent", "version": "2.0.0"}
APPROVAL_ABOVE = Decimal("5000")

PROMPTS = {"match.system": "You check invoices against purchase orders. Answer match or mismatch."}

TOOLS = ToolRegistry()
POSTED: list[dict[str, Any]] = []  # the "ERP ledger" the live posting tool writes to


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def erp_invoice(args: Mapping[str, Any]) -> dict[str, Any]:
    """An invoice from the ERP (deterministic stand-in data)."""
    n = _h(str(args["invoice"]))
    return {"invoice": args["invoice"], "vendor": f"V-{n % 13}", "amount": str(Decimal(n % 900_000) / 100)}


def erp_po(args: Mapping[str, Any]) -> dict[str, Any]:
    """A purchase order; one in five differs from its invoice."""
    inv = erp_invoice({"invoice": args["invoice"]})
    n = _h(str(args["po"]))
    amount = Decimal(inv["amount"]) + (Decimal(n % 50) if n % 5 == 0 else 0)
    return {"po": args["po"], "vendor": inv["vendor"], "amount": str(amount)}


def erp_post(args: Mapping[str, Any]) -> dict[str, Any]:
    """Post the invoice for payment (a write into the ERP)."""
    POSTED.append(dict(args))
    return {"posted": True, "document": f"DOC-{len(POSTED)}"}


TOOLS.register("erp.invoice", erp_invoice, "read", simulator=erp_invoice)
TOOLS.register("erp.po", erp_po, "read", simulator=erp_po)
TOOLS.register("erp.post", erp_post, "write")


def match_invoice(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Match invoice and PO with the model's help; post matches, with approval above a limit."""
    inv = ctx.tool("erp.invoice", {"invoice": input["invoice"]})
    po = ctx.tool("erp.po", {"invoice": input["invoice"], "po": input["po"]})
    same = inv["amount"] == po["amount"] and inv["vendor"] == po["vendor"]
    verdict = ctx.llm(
        [
            {"role": "system", "content": ctx.prompt("match.system")},
            {
                "role": "user",
                "content": f"Invoice {inv['invoice']}: {inv['vendor']} {inv['amount']}\n"
                f"PO {po['po']}: {po['vendor']} {po['amount']}\n"
                f"Totals look like a {'match' if same else 'mismatch'}.\nCHOOSE: match | mismatch",
            },
        ]
    ).content.strip()
    if verdict != "match":
        return {"outcome": "escalated", "verdict": verdict, "invoice": inv["invoice"]}
    amount = Decimal(inv["amount"])
    decision = "require_approval" if amount > APPROVAL_ABOVE else "allow"
    ctx.policy("ap.posting", "erp.post", decision, f"amount {amount} vs limit {APPROVAL_ABOVE}")
    change = ctx.propose_change("erp.post", {"status": "open"}, {"status": "posted"}, reversible=True)
    if decision == "require_approval" and not ctx.request_approval(
        f"post {inv['invoice']} for {amount}", "medium", change
    ):
        return {"outcome": "escalated", "verdict": "match", "posted": False}
    posted = ctx.tool("erp.post", {"invoice": inv["invoice"], "amount": inv["amount"]})
    ctx.apply_change(change)
    return {"verdict": "match", "posted": posted["posted"], "invoice": inv["invoice"]}


def inputs(n: int, salt: str = "") -> list[dict[str, Any]]:
    """``n`` deterministic example invoices."""
    return [{"invoice": f"INV-{salt}{i:04d}", "po": f"PO-{salt}{i:04d}"} for i in range(n)]
