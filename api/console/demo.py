"""The console stage of ``tacho demo``: one API key per role and runs waiting for people.

The runs are made by the console demo's billing agent (``api/console/demo_agent.py``) through
the agent runtime, recording into the ledger in-process (:func:`ingest.embedded.embedded_runtime`):
the same events an agent service would publish. Two runs wait for a person to approve a credit-limit
raise and one, having voided an invoice, for a person to agree to a credit note: their agent
service stops while it waits (as one being redeployed would), so the approvals stay in the queue
for you. In a fourth run Pat Approver agrees to the credit note (through
``domain.approvals.record_decision``, the console's own path), and the agent goes on and completes.
The keys' secrets go only into a file of mode 0600 in the data dir; the approver's is printed
once, on stdout, never logged.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from api.approvals import identity
from api.audit_trail import actor
from api.bootstrap import write_secret
from api.console import demo_agent
from api.keys_store import ApiKey, KeyStore
from api.settings import Settings
from domain.approvals import record_decision
from domain.ledger import Ledger, iso
from ingest.embedded import LedgerPlatform, embedded_runtime
from tachograph.halts import HaltSet
from tachograph.platform import ApprovalStatus

PEOPLE: tuple[tuple[str, str], ...] = (
    ("auditor", "Ada Auditor"),
    ("analyst", "Ana Analyst"),
    ("engineer", "Eli Engineer"),
    ("approver", "Pat Approver"),
    ("admin", "Ari Admin"),
)
WORKFLOW = demo_agent.WORKFLOW
CONSOLE_URL = "http://127.0.0.1:8080/console/"


@dataclass
class ConsoleDemo:
    """What the stage made: the keys file, the key ids by role (no secrets) and the runs."""

    keys_path: Path
    key_ids: dict[str, str] = field(default_factory=dict)
    created_keys: bool = False
    pending: list[str] = field(default_factory=list)  # wait for approval of a change (credit raises)
    open_runs: list[str] = field(default_factory=list)  # applied a reversible change, then wait
    completed: list[str] = field(default_factory=list)  # applied one, approved, completed
    halted: list[str] = field(default_factory=list)  # refused by a kill switch


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


class AgentStopped(BaseException):
    """Stands in for an agent service whose process stops while its run waits for a person (a
    deploy, a crash): the run stays open and its approval waits in the queue. A BaseException, as
    a process exit is: the runtime records nothing more for the run."""


class ConsolePeople:
    """The platform as the demo's agents see it: halts from the ledger, and people's decisions.

    An approval of a run in ``decisions`` is decided by ``person`` through
    :func:`~domain.approvals.record_decision` (what the console's Approve does), and the waiting
    agent reads that decision; for any other the agent's service stops while it waits
    (:class:`AgentStopped`), leaving the approval to whoever opens the console.
    """

    def __init__(self, ledger: Ledger, person: ApiKey | None,
                 decisions: Mapping[str, tuple[str, str | None]],
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.person = person
        self.decisions = dict(decisions)
        self.clock = clock
        self.inner = LedgerPlatform(ledger, clock=clock)

    def halts(self, workspace: str, fresh: bool = False) -> HaltSet:
        """The halts in force, from the ledger."""
        return self.inner.halts(workspace, fresh)

    def approval(self, workspace: str, approval_id: str, wait_s: float) -> ApprovalStatus | None:
        """The person's decision on the approval; raises AgentStopped where nobody decides now."""
        row = self.ledger.store.approval(workspace, approval_id)
        if row is None:
            return None
        verdict = self.decisions.get(row.run_id)
        if verdict is None or self.person is None:
            raise AgentStopped(f"run {row.run_id!r} waits for a person; its agent service stopped")
        now = self.clock()
        if row.status(now) == "pending":
            record_decision(self.ledger, workspace, approval_id, verdict[0],
                            identity(self.person.label, self.person.id), actor(self.person),
                            verdict[1], iso(now), now, row.run_id)
        return self.inner.approval(workspace, approval_id, 0)

    def policy_fail_closed(self, workspace: str) -> tuple[str, ...] | None:
        """The workspace's fail-closed setting, from the ledger."""
        return self.inner.policy_fail_closed(workspace)

    def close(self) -> None:
        """Nothing to release (the ledger belongs to the caller)."""


@dataclass(frozen=True)
class _Seed:
    into: str  # the ConsoleDemo list the run goes to
    agent: Callable[..., Any]
    input: dict[str, Any]
    run_id: str
    risk_tier: str = "medium"
    decision: tuple[str, str | None] | None = None  # Pat Approver's decision, if any


def _seeds() -> list[_Seed]:
    tag = secrets.token_hex(3)
    return [
        _Seed("pending", demo_agent.raise_credit_limit,
              {"customer": 4401, "credit_limit": 2500, "risk": "high"}, f"credit-raise-1-{tag}", "high"),
        _Seed("pending", demo_agent.raise_credit_limit,
              {"customer": 4402, "credit_limit": 1200, "risk": "medium"}, f"credit-raise-2-{tag}", "high"),
        _Seed("open_runs", demo_agent.void_invoice, {"invoice": "INV-7001"}, f"invoice-void-1-{tag}"),
        _Seed("completed", demo_agent.void_invoice, {"invoice": "INV-7002"}, f"invoice-void-2-{tag}",
              decision=("approved", "credit note agreed with the customer")),
    ]


def approver_key(settings: Settings, workspace: str) -> ApiKey | None:
    """Pat Approver's live key in ``workspace`` (made by :func:`create_keys`), if there is one."""
    store = KeyStore(settings.data_dir / "keys" / "apikeys.db", time.time)
    try:
        name = dict(PEOPLE)["approver"]
        return next((k for k in store.list(workspace)
                     if k.role == "approver" and k.label == name and not k.revoked), None)
    finally:
        store.close()


def seed_runs(settings: Settings, ledger: Ledger, workspace: str, demo: ConsoleDemo) -> None:
    """Runs of the billing agent: three that wait for a person (two credit-limit raises, one
    voided invoice), and one whose credit note Pat Approver agrees to, which then completes."""
    seeds = _seeds()
    people = ConsolePeople(ledger, approver_key(settings, workspace),
                           {s.run_id: s.decision for s in seeds if s.decision is not None})
    with embedded_runtime(ledger, workspace, platform=people, name="tacho demo (console)",
                          model="sim-small-v1") as rt:
        for seed in seeds:
            into: list[str] = getattr(demo, seed.into)
            try:
                result = rt.run(seed.agent, seed.input, run_id=seed.run_id, risk_tier=seed.risk_tier)
            except AgentStopped:  # left waiting (with no approver key, even the run meant to complete)
                (into if seed.decision is None else demo.open_runs).append(seed.run_id)
                continue
            # a kill switch on billing-ops refuses the run (recorded as cancelled, with the halt)
            (demo.halted if result.halted else into).append(seed.run_id)


def run_console_demo(settings: Settings, ledger: Ledger, out: Console, workspace: str = "demo") -> ConsoleDemo:
    """Create the demo keys (once), record runs for people to act on, say how to open the console."""
    demo = ConsoleDemo(keys_path(settings))
    made = create_keys(settings, workspace)
    seed_runs(settings, ledger, workspace, demo)
    waiting = len(demo.pending) + len(demo.open_runs)
    out.print(f"workspace [bold]{workspace}[/], the billing agent through the agent runtime: {waiting} runs wait "
              f"for a person ({len(demo.pending)} credit-limit raises, {len(demo.open_runs)} voided invoice; "
              "their agent service stopped while waiting, so the approvals stay in the queue for you); "
              f"{len(demo.completed)} run completed once Pat Approver agreed to its credit note. "
              "Voided invoices are reversible changes: revert them in the console.")
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
