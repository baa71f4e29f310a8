"""The policy part of ``tacho demo``: the example agents run under a small policy that Open Policy
Agent decides, and a stricter revision is tried on their runs before anyone activates it.

- :func:`prepare`: find opa (``TACHO_OPA_BIN``, PATH, the build cached in ``.cache/opa``) or build
  it once with Go (:mod:`replay.opa_build`, as the test harness does); publish
  ``examples/policies/refunds`` as a revision of workspace ``demo`` and activate it (what
  ``tacho policy publish --activate`` does). Without opa and without Go, the demo says so and
  its agents run with no policy engine.
- :func:`serving`: OPA as the agents' sidecar, downloading the active revision from the demo's API
  (``GET /v1/policy/bundle.tar.gz``, configured as ``tacho policy opa-config`` prints it), with
  the agents' publisher key as its bearer token, given in OPA's environment and never written.
- :func:`what_if_stage`: publish, without activating, ``examples/policies/refunds-stricter`` and
  ask it about every action of the agents' runs (what ``tacho replay --policy REV`` does): the
  report is stored like any replay.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import examples
from api.cli_policy import opa_config, read_policy_files
from api.policies import OpaChecker, PolicyService
from api.settings import Settings
from domain.errors import TachographError
from domain.ledger import Ledger, iso
from ingest.policies import DEFAULT_FAIL_CLOSED, Revision, check_files, files_digest
from replay import opa_build
from replay.history import load_runs
from replay.opa_sidecar import OpaSidecar
from replay.policy_replay import PolicyGate, Threshold
from replay.render import render_report
from replay.revision_replay import RULE as RULE
from replay.revision_replay import what_if_revision
from replay.store import ReplayReports

POLICIES = Path(examples.__file__).resolve().parent / "policies"
POLICY = POLICIES / "refunds"
STRICTER = POLICIES / "refunds-stricter"
ACTOR = {"name": "tacho demo", "via": "cli"}
MAX_NEW_DENIALS = "0"
MAX_NEW_APPROVALS = "5%"
DECISIONS = (("allow", "allowed"), ("require_approval", "needed approval"), ("deny", "denied"))


@dataclass(frozen=True)
class DemoPolicy:
    """The policy in force for the demo's agents and the opa that decides it."""

    workspace: str
    opa: str
    revision: str
    records: int  # ledger records written to put it in force (0: it already was)

    def to_json(self) -> dict[str, Any]:
        """As the demo's summary shows it."""
        return {"ran": True, "workspace": self.workspace, "opa": self.opa, "revision": self.revision,
                "records": self.records, "rule": RULE}


def _opa(out: Console) -> tuple[str | None, str | None]:
    """The opa binary (found, or built now), or why there is none."""
    try:
        found = opa_build.find()
        if found is not None:
            return found, None
        if opa_build.go_binary() is None:
            return None, ("no opa binary (TACHO_OPA_BIN, PATH or .cache/opa) and no Go toolchain to "
                          "build one")
        out.print(f"building opa {opa_build.VERSION} with `go install` into "
                  f"{opa_build.default_cache()} (once; about 2 minutes cold)...")
        return str(opa_build.build()), None
    except TachographError as e:
        return None, str(e)


def _opa_env(binary: str) -> str:
    """``TACHO_OPA_BIN=... `` when ``tacho replay`` would not find ``binary`` itself (a build in
    the cache is neither TACHO_OPA_BIN nor on PATH)."""
    try:
        return "" if opa_build.configured() == binary else f"TACHO_OPA_BIN={binary} "
    except TachographError:
        return f"TACHO_OPA_BIN={binary} "


def put_in_force(service: PolicyService, workspace: str, path: Path, *, activate: bool,
                 message: str) -> tuple[Revision, int]:
    """The revision holding ``path``'s files (published now unless the same files and settings
    were published before), activated when ``activate``; and how many records that wrote."""
    files = read_policy_files(path)
    digest = files_digest(check_files(files))
    before = service.ledger.store.size()
    same = [r for r in service.fold(workspace).revisions.values()
            if r.digest == digest and r.fail_closed == DEFAULT_FAIL_CLOSED]
    if same:
        rev = max(same, key=lambda r: r.index)
        if activate:
            service.activate(ACTOR, workspace, rev.revision, "the demo's policy")
    else:
        rev, _ = service.publish(ACTOR, workspace, files, message=message, activate=activate,
                                 reason="the demo's policy" if activate else None)
    return rev, service.ledger.store.size() - before


def prepare(ledger: Ledger, workspace: str, out: Console) -> tuple[DemoPolicy | None, dict[str, Any]]:
    """Find or build opa, then put the demo's policy in force; (None, why not) without opa."""
    binary, why = _opa(out)
    if binary is None:
        out.print(f"[yellow]no policy engine:[/] {why}. The example agents run without one; the "
                  "policy section is left out (install opa or Go, or set TACHO_OPA_BIN).",
                  soft_wrap=True)
        return None, {"ran": False, "reason": why}
    service = PolicyService(ledger, time.time, OpaChecker(binary))
    rev, records = put_in_force(service, workspace, POLICY, activate=True,
                                message="the example agents' refund policy: approval above 100 "
                                        "USD, denied above 1000")
    policy = DemoPolicy(workspace, binary, rev.revision, records)
    out.print(f"policy revision [bold]{rev.revision}[/] ({POLICY.relative_to(POLICIES.parent.parent)})"
              f" is in force in workspace {workspace} ({'published and activated now' if records else 'as before'}); "
              f"{service.checker.version if service.checker else 'opa'} decides", soft_wrap=True)
    return policy, policy.to_json()


@contextmanager
def serving(policy: DemoPolicy, api_url: str, key: str, out: Console) -> Iterator[OpaSidecar]:
    """OPA loading the workspace's active revision from ``api_url`` with ``key`` (a publisher
    key); started once the bundle is activated, stopped when the block ends."""
    config = opa_config(api_url, "${TACHO_OPA_KEY}", decision_logs=False, rule=RULE)
    with tempfile.TemporaryDirectory(prefix="tacho-demo-opa-") as tmp:
        path = Path(tmp) / "opa-config.json"
        path.write_text(json.dumps(config, indent=2))
        with OpaSidecar(config=path, binary=policy.opa, env={"TACHO_OPA_KEY": key}) as opa:
            out.print(f"OPA at {opa.url} loads the active revision from {api_url}/v1/policy/bundle.tar.gz "
                      "(`tacho policy opa-config` prints this configuration); the runtime asks it "
                      "before every tool call and change", soft_wrap=True, markup=False)
            yield opa


def decisions(events: Sequence[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """The policy engine's decisions in a run's events, by (revision, decision); evaluations the
    runtime made while OPA could not be asked have no revision (``none``)."""
    found: Counter[tuple[str, str]] = Counter()
    for e in events:
        if e["type"] == "policy.evaluated" and e["data"]["policy"] == RULE:
            found[(str(e["data"].get("revision") or "none"), str(e["data"]["decision"]))] += 1
    return found


def print_decisions(found: Counter[tuple[str, str]], out: Console) -> dict[str, dict[str, int]]:
    """The table of OPA's decisions by revision; the same as JSON."""
    by_rev: dict[str, dict[str, int]] = {}
    for (rev, decision), n in sorted(found.items()):
        by_rev.setdefault(rev, dict.fromkeys((d for d, _ in DECISIONS), 0))[decision] = n
    t = Table(title="what OPA decided about the agents' actions, by policy revision", show_edge=False)
    t.add_column("revision")
    for _, label in DECISIONS:
        t.add_column(label, justify="right")
    for rev, counts in by_rev.items():
        t.add_row(rev, *(str(counts[d]) for d, _ in DECISIONS))
    out.print(t)
    return by_rev


def what_if_stage(settings: Settings, ledger: Ledger, run_ids: Sequence[str], policy: dict[str, Any],
                  out: Console) -> dict[str, Any]:
    """Publish the stricter revision (not in force) and what-if it on the agents' runs."""
    if not policy.get("ran"):
        out.print(f"left out: {policy.get('reason')}", soft_wrap=True, markup=False)
        return {"ran": False, "reason": policy.get("reason")}
    workspace = str(policy["workspace"])
    service = PolicyService(ledger, time.time, OpaChecker(policy["opa"]))
    rev, records = put_in_force(service, workspace, STRICTER, activate=False,
                                message="stricter refunds: approval above 50 USD, denied above 500")
    out.print(f"published revision [bold]{rev.revision}[/] ({STRICTER.name}), not in force: "
              f"{policy['revision']} still is", soft_wrap=True)
    gate = PolicyGate(Threshold.parse(MAX_NEW_DENIALS, "--max-new-denials"),
                      Threshold.parse(MAX_NEW_APPROVALS, "--max-new-approvals"))
    stamp = f"{int(ledger.clock()):x}"
    report = what_if_revision(load_runs(ledger.store, run_ids=list(run_ids)), rev, workspace,
                              replay_id=f"demo-{stamp}-policy-{rev.revision}", created=iso(ledger.clock()),
                              gate=gate, binary=policy["opa"])
    report["workspace"] = workspace
    ReplayReports(settings.data_dir / "replays").save(report)
    render_report(report, out, max_runs=8)
    s = report["summary"]
    out.print(f"revision {rev.revision} would newly deny {s['new_denials']} and newly send "
              f"{s['new_approvals']} of the {s['evaluated']} re-evaluated actions to a person",
              soft_wrap=True, markup=False)
    out.print(f"stored: tacho replay show {report['replay_id']}; the same yourself: {_opa_env(policy['opa'])}"
              f"tacho replay --policy {rev.revision} --workflow ticket-triage "
              f"--max-new-denials {MAX_NEW_DENIALS} --max-new-approvals {MAX_NEW_APPROVALS}; "
              f"then `tacho policy activate {rev.revision} --workspace {workspace}` rolls it out and "
              f"`tacho policy activate {policy['revision']} --workspace {workspace}` rolls it back "
              "(docs/policies.md)",
              soft_wrap=True, markup=False)
    return {"ran": True, "revision": rev.revision, "active": policy["revision"], "records": records,
            "replay_id": report["replay_id"], "summary": s, "gate": report["gate"]}
