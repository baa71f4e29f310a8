"""``tacho replay --policy PATH|REVISION``: what-if policy replay of recorded runs against a
candidate policy (a ``.rego`` file, a bundle directory, or a revision stored in the local ledger),
served by its own OPA sidecar (or ``--opa-url``); stored like other replays."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from api.output import console, err_console, print_json
from api.read_side import run_index
from api.settings import Settings
from domain.ledger import Ledger, iso
from ingest.policies import LedgerPolicies, Revision, is_revision
from replay.history import RecordedRun, load_runs
from replay.opa_sidecar import OpaSidecar
from replay.policy_replay import PolicyGate, Threshold, what_if_policy
from replay.render import render_report
from replay.revision_replay import candidate_of, what_if_revision
from replay.store import ReplayReports
from tachograph.policy import OpaClient


def policy_gate(max_new_denials: str | None, max_new_approvals: str | None) -> PolicyGate:
    """The gate of ``--max-new-denials`` / ``--max-new-approvals`` (a count ``N``, or a rate
    ``R%`` / ``0.05``)."""
    return PolicyGate(
        Threshold.parse(max_new_denials, "--max-new-denials") if max_new_denials is not None else None,
        Threshold.parse(max_new_approvals, "--max-new-approvals") if max_new_approvals is not None else None,
    )


def stored_revision(ledger: Ledger, name: str, runs: list[RecordedRun]) -> tuple[Revision, str] | None:
    """The revision ``name`` of the runs' workspace(s) in the local ledger, and its workspace;
    None when ``name`` is not shaped like a revision id (then it is a path that does not exist)."""
    if not is_revision(name):
        return None
    book = LedgerPolicies(ledger.store)
    spaces = sorted({r.workspace for r in runs})
    for workspace in spaces:
        rev = book.fold(workspace).revisions.get(name)
        if rev is not None:
            return rev, workspace
    raise typer.BadParameter(f"--policy {name}: no such file or directory, and workspace "
                             f"{' or '.join(spaces)} has no policy revision {name} "
                             "(tacho policy list --workspace W)")


@contextlib.contextmanager
def _opa_url(policy: Path, opa_url: str | None) -> Iterator[str]:
    if opa_url is not None:
        yield opa_url
        return
    with OpaSidecar(policy) as sidecar:
        yield sidecar.url


def policy_replay(ledger: Ledger, settings: Settings, *, policy: Path, opa_url: str | None, rule: str,
                  gate: PolicyGate, rid: str, workflow: str | None, since: str | None,
                  runs: list[str], limit: int | None, json_out: bool) -> int:
    """Run the what-if policy replay, store and print its report; the exit code (1: gate failed).

    ``policy``: a ``.rego`` file or bundle directory; a name that is no path but a revision id
    (``3-5f2a9c1e0b7d``) is that revision of the runs' workspace in the local ledger (a path that
    exists wins). With ``opa_url``, that OPA is asked instead of one started here."""
    index = run_index(settings, ledger.store)
    try:
        recorded = load_runs(ledger.store, workflow=workflow, since=since, run_ids=runs, limit=limit,
                             index=index)
    finally:
        index.close()
    if not recorded:
        raise typer.BadParameter(f"no finished production runs of workflow {workflow!r} match")
    stored = None if policy.exists() else stored_revision(ledger, str(policy), recorded)
    if stored is not None and opa_url is None:
        rev, workspace = stored
        report = what_if_revision(recorded, rev, workspace, replay_id=rid, created=iso(time.time()),
                                  gate=gate, rule=rule)
    else:
        candidate = candidate_of(stored[0].revision) if stored else f"policy {policy}"
        with _opa_url(policy, opa_url) as url, OpaClient(url, rule, timeout_s=10.0) as client:
            report = what_if_policy(recorded, client.decide, replay_id=rid, created=iso(time.time()),
                                    candidate=candidate, gate=gate)
    ReplayReports(settings.data_dir / "replays").save(report)
    if json_out:
        print_json(report)
    else:
        render_report(report, console())
        err_console().print(f"stored: tacho replay show {rid}")
    return 0 if report["gate"]["passed"] else 1
