"""What-if policy replay against a stored policy revision (``tacho replay --policy REV``,
``POST /v1/replays`` with ``"mode": "policy"``, ``make demo``).

The revision's files are written, with a ``.manifest`` naming the revision, into a private
temporary directory that an OPA sidecar loads as a bundle; every recorded action of the runs is
asked of it (:func:`replay.policy_replay.what_if_policy`), so the report's candidate revisions
name the stored revision, never a path on the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ingest.policies import Revision
from replay.history import RecordedRun
from replay.opa_sidecar import revision_sidecar
from replay.policy_replay import PolicyGate, what_if_policy
from tachograph.policy import OpaClient

RULE = "tachograph/decision"


def candidate_of(revision: str) -> str:
    """How a report names a stored revision as its candidate."""
    return f"policy revision {revision}"


def what_if_revision(runs: Sequence[RecordedRun], rev: Revision, workspace: str, *,
                     replay_id: str, created: str, gate: PolicyGate, binary: str | None = None,
                     rule: str = RULE) -> dict[str, Any]:
    """The what-if report of ``runs`` against revision ``rev`` of ``workspace``, asked of its own
    OPA (``binary``: the opa executable; default ``TACHO_OPA_BIN`` or PATH)."""
    with revision_sidecar(rev, workspace, binary=binary) as opa, \
            OpaClient(opa.url, rule, timeout_s=10.0) as client:
        return what_if_policy(runs, client.decide, replay_id=replay_id, created=created,
                              candidate=candidate_of(rev.revision), gate=gate)
