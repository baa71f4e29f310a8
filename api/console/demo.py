"""The console stage of ``tacho demo``: one API key per role and runs waiting for people.

The runs are recorded by the publisher SDK over a :class:`~ingest.transport.LedgerTransport`, so
they are the same events an agent service would publish. The keys' secrets go only into a file of
mode 0600 in the data dir; the approver's is printed once, on stdout, never logged.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Literal

from rich.console import Console

from api.bootstrap import write_secret
from api.keys_store import KeyStore
from api.settings import Settings
from domain.ledger import Ledger
from ingest.errors import RunHaltedError
from ingest.halts import LedgerHalts
from ingest.sdk import Publisher, RunRecorder
from tachograph.transports import LedgerTransport

PEOPLE: tuple[tuple[str, str], ...] = (
    ("auditor", "Ada Auditor"),
    ("analyst", "Ana Analyst"),
    ("engineer", "Eli Engineer"),
    ("approver", "Pat Approver"),
    ("admin", "Ari Admin"),
)
WORKFLOW = "billing-ops"
CONSOLE_URL = "http://127.0.0.1:8080/console/"


@dataclass
class ConsoleDemo:
    """What the stage made: the keys file, the key ids by role (no secrets) and the runs."""

    keys_path: Path
    key_ids: dict[str, str] = field(default_factory=dict)
    created_keys: bool = False
    pending: list[str] = field(default_factory=list)
    open_runs: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    halted: list[str] = field(default_factory=list)


def keys_path(settings: Settings) -> Path:
    """Where the demo keys are written."""
    return settings.data_dir / "demo-keys.txt"


def create_keys(settings: Settings, workspace: str) -> tuple[dict[str, str], str] | None:
    """One key per console role, written to the keys file; (key ids, approver secret), or None
    if the file exists already (keys are made and shown only once)."""
    path = keys_path(settings)
    if path.exists():
        return None
    store = KeyStore(settings.data_dir / "keys" / "apikeys.db", time.time)
    ids: dict[str, str] = {}
    lines = [f"# Tachograph console keys for workspace {workspace!r}: sign in at {CONSOLE_URL}",
             "# role\tname\tkey"]
    approver = ""
    try:
        for role, name in PEOPLE:
            key, secret = store.create(workspace, role, label=name)
            ids[role] = key.id
            lines.append(f"{role}\t{name}\t{secret}")
            if role == "approver":
                approver = secret
    finally:
        store.close()
    write_secret(path, "\n".join(lines) + "\n")
    return ids, approver


def _pending(publisher: Publisher, n: int, amount: int, risk: Literal["low", "medium", "high"]) -> RunRecorder:
    """A run whose credit-limit raise waits for a person's approval (left open)."""
    run = publisher.start(WORKFLOW, risk_tier="high", input={"customer": 4400 + n},
                          run_id=f"credit-raise-{n}-{secrets.token_hex(3)}")
    run.model_call(provider="openai", model="gpt-4.1-mini", input_tokens=900 + 40 * n, output_tokens=120,
                   cost_usd=Decimal("0.000552"), latency_ms=640)
    target = f"crm.customer/{4400 + n}"
    run.policy("credit-limit", target, "require_approval", f"raise over $1,000 (to ${amount})",
               risk_score=Decimal("0.7"))
    change = run.propose_change(target, {"credit_limit": 500, "tier": "silver"},
                                {"credit_limit": amount, "tier": "silver"})
    run.request_approval(f"raise the credit limit of customer {4400 + n} to {amount}", risk, change_id=change)
    return run


def _voided(publisher: Publisher, n: int, complete: bool) -> RunRecorder:
    """A run that voided an invoice (a reversible change); completed or left open."""
    run = publisher.start(WORKFLOW, input={"invoice": f"INV-{7000 + n}"},
                          run_id=f"invoice-void-{n}-{secrets.token_hex(3)}")
    run.tool_call("billing.invoice.get", {"id": f"INV-{7000 + n}"}, result={"status": "open"},
                  latency_ms=35)
    change = run.propose_change(f"billing.invoice/INV-{7000 + n}", {"status": "open", "amount": "120.00"},
                                {"status": "void", "amount": "120.00"}, reversible=True)
    run.apply_change(change)
    if complete:
        run.complete("succeeded", result={"voided": f"INV-{7000 + n}"})
    return run


def seed_runs(settings: Settings, ledger: Ledger, workspace: str, demo: ConsoleDemo) -> None:
    """Two runs waiting for approval, one open and one completed run with a reversible change."""
    publisher = Publisher(LedgerTransport(ledger), workspace=workspace, agent_id="billing-agent",
                          agent_version="3.1.0", halts=LedgerHalts(ledger.store))
    steps: list[tuple[list[str], Callable[[], RunRecorder]]] = [
        (demo.pending, partial(_pending, publisher, 1, 2500, "high")),
        (demo.pending, partial(_pending, publisher, 2, 1200, "medium")),
        (demo.open_runs, partial(_voided, publisher, 1, complete=False)),
        (demo.completed, partial(_voided, publisher, 2, complete=True)),
    ]
    for into, make in steps:
        try:
            into.append(make().run_id)
        except RunHaltedError as e:  # the workflow's kill switch is on: recorded as cancelled
            demo.halted.append(e.run_id)
    publisher.flush()


def run_console_demo(settings: Settings, ledger: Ledger, out: Console, workspace: str = "demo") -> ConsoleDemo:
    """Create the demo keys (once), record runs for people to act on, say how to open the console."""
    demo = ConsoleDemo(keys_path(settings))
    made = create_keys(settings, workspace)
    seed_runs(settings, ledger, workspace, demo)
    out.print(f"workspace [bold]{workspace}[/]: {len(demo.pending)} runs wait for approval, "
              f"{len(demo.open_runs)} open run and {len(demo.completed)} completed run with a reversible change")
    if demo.halted:
        out.print(f"[yellow]the {WORKFLOW} kill switch is on: {len(demo.halted)} runs were refused[/]")
    if made is None:
        out.print(f"console keys were created by an earlier demo; they are in {demo.keys_path} (mode 0600)")
    else:
        demo.key_ids, approver = made
        demo.created_keys = True
        out.print(f"one API key per role ({', '.join(r for r, _ in PEOPLE)}) is in {demo.keys_path} "
                  "(mode 0600; shown only this once)")
        out.print(f"approver key (Pat Approver): {approver}", soft_wrap=True, markup=False)
    out.print(f"run `tacho serve` and open {CONSOLE_URL}", markup=False)
    return demo
