"""The run aggregate: the run rules of the event contract, as a pure state machine.

Each accepted event moves a :class:`RunState` forward; a breach raises :class:`RunRuleError`
naming the rule. The state is small and serialisable so that the store keeps one row per run.

Why not ``eventsourcing.domain.Aggregate``: its events are the library's own (UUID originator
ids, versions from 1, timestamps from its clock), while ours are defined by the public
contract and hashed into the ledger verbatim; see docs/decisions/0002-run-aggregate.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tachograph.errors import RunRuleError


@dataclass
class Change:
    """What the run knows about one proposed change."""

    reversible: bool
    target: str
    applied: bool = False
    reverted: bool = False
    gated: bool = False


@dataclass
class RunState:
    """The state of one run that the rules need."""

    workspace: str
    run_id: str
    next_seq: int = 0
    last_hash: str | None = None
    completed: bool = False
    approvals: dict[str, str] = field(default_factory=dict)  # approval_id -> requested|approved|rejected
    approval_change: dict[str, str] = field(default_factory=dict)  # approval_id -> change_id
    changes: dict[str, Change] = field(default_factory=dict)
    gated: list[str] = field(default_factory=list)  # pending require_approval actions
    replay_of: str | None = None  # the run this one replays (``run.started.data.replay_of``)

    def to_bytes(self) -> bytes:
        """Serialise for the store (``replay_of`` only when set: states stored before it load as
        they were)."""
        out: dict[str, Any] = {
            "w": self.workspace,
            "r": self.run_id,
            "n": self.next_seq,
            "h": self.last_hash,
            "c": self.completed,
            "a": self.approvals,
            "ac": self.approval_change,
            "ch": {
                k: [v.reversible, v.target, v.applied, v.reverted, v.gated]
                for k, v in self.changes.items()
            },
            "g": self.gated,
        }
        if self.replay_of is not None:
            out["ro"] = self.replay_of
        return orjson.dumps(out)

    @staticmethod
    def from_bytes(raw: bytes) -> RunState:
        """Deserialise a stored state."""
        d: dict[str, Any] = orjson.loads(raw)
        return RunState(
            workspace=d["w"],
            run_id=d["r"],
            next_seq=d["n"],
            last_hash=d["h"],
            completed=d["c"],
            approvals=d["a"],
            approval_change=d["ac"],
            changes={k: Change(*v) for k, v in d["ch"].items()},
            gated=d["g"],
            replay_of=d.get("ro"),
        )

    def check(self, event: dict[str, Any]) -> None:
        """Raise RunRuleError if ``event`` (the next in seq order) breaks a run rule."""
        etype = event["type"]
        data = event["data"]
        seq = event["seq"]
        if seq == 0 and etype != "run.started":
            raise RunRuleError(f"seq 0 must be run.started, got {etype}")
        if etype == "run.started" and seq != 0:
            raise RunRuleError(f"run.started must have seq 0, got {seq}")
        if self.completed and etype != "feedback.recorded":
            raise RunRuleError(f"{etype} after run.completed: only feedback.recorded may follow")
        if etype == "feedback.recorded" and not self.completed:
            raise RunRuleError("feedback.recorded before run.completed")
        if etype == "approval.requested":
            if data["approval_id"] in self.approvals:
                raise RunRuleError(f"approval_id {data['approval_id']!r} already requested")
            cid = data.get("change_id")
            if cid is not None and cid not in self.changes:
                raise RunRuleError(f"approval.requested names unknown change_id {cid!r}")
        elif etype == "approval.decided":
            status = self.approvals.get(data["approval_id"])
            if status is None:
                raise RunRuleError(
                    f"approval.decided names approval_id {data['approval_id']!r} that was never requested"
                )
            if status != "requested":
                raise RunRuleError(f"approval {data['approval_id']!r} was already decided ({status})")
        elif etype == "change.proposed":
            if data["change_id"] in self.changes:
                raise RunRuleError(f"change_id {data['change_id']!r} already proposed")
        elif etype == "change.applied":
            cid = data["change_id"]
            change = self.changes.get(cid)
            if change is None:
                raise RunRuleError(f"change.applied names change_id {cid!r} that was never proposed")
            if change.applied:
                raise RunRuleError(f"change {cid!r} was already applied")
            if self.needs_approval(cid) and not self.approved(cid):
                raise RunRuleError(
                    f"change {cid!r} required approval and no granted approval names it"
                )
        elif etype == "change.reverted":
            refusal = self.revert_refusal(data["change_id"])
            if refusal is not None:
                raise RunRuleError(refusal)

    def revert_refusal(self, change_id: str) -> str | None:
        """Why the change cannot be reverted (applied, reversible, not yet reverted), or None.

        The rule of ``change.reverted``, apart from the run being open: the console also asks
        it of a completed run's change before undoing it with a compensating run.
        """
        change = self.changes.get(change_id)
        if change is None or not change.applied:
            return f"change {change_id!r} was not applied in run {self.run_id!r}"
        if not change.reversible:
            return f"change {change_id!r} is irreversible: it cannot be undone"
        if change.reverted:
            return f"change {change_id!r} was already reverted in run {self.run_id!r}"
        return None

    def needs_approval(self, change_id: str) -> bool:
        """Whether the run's policy (or an approval request) gated this change."""
        if self.changes[change_id].gated:
            return True
        return change_id in self.approval_change.values()

    def approved(self, change_id: str) -> bool:
        """Whether an approval naming this change was granted."""
        return any(
            cid == change_id and self.approvals.get(aid) == "approved"
            for aid, cid in self.approval_change.items()
        )

    def apply(self, event: dict[str, Any], entry_hash: str) -> None:
        """Move the state past an accepted event."""
        etype = event["type"]
        data = event["data"]
        self.next_seq = event["seq"] + 1
        self.last_hash = entry_hash
        if etype == "run.completed":
            self.completed = True
        elif etype == "run.started":
            self.replay_of = data.get("replay_of")
        elif etype == "policy.evaluated":
            if data["decision"] == "require_approval":
                self.gated.append(data["action"])
        elif etype == "approval.requested":
            self.approvals[data["approval_id"]] = "requested"
            if data.get("change_id") is not None:
                self.approval_change[data["approval_id"]] = data["change_id"]
        elif etype == "approval.decided":
            self.approvals[data["approval_id"]] = data["decision"]
        elif etype == "change.proposed":
            change = Change(bool(data["reversible"]), data["target"])
            # a require_approval decision gates the next change proposed for that action
            for name in (data["change_id"], data["target"]):
                if name in self.gated:
                    self.gated.remove(name)
                    change.gated = True
                    break
            self.changes[data["change_id"]] = change
        elif etype == "change.applied":
            self.changes[data["change_id"]].applied = True
        elif etype == "change.reverted":
            self.changes[data["change_id"]].reverted = True
