"""What-if policy replays over HTTP, with a real OPA: runs recorded under revision 1 of acme's
refund policy (approval above 100, deny above 1000; OPA downloads it from the API, as `tacho
policy opa-config` configures it) are re-asked of revision 2 (approval above 50, deny above 500),
published but not in force, through ``POST /v1/replays`` with ``"mode": "policy"``; the server
serves the stored revision to its own OPA. Also ``tacho replay --policy REVISION`` on the same
ledger, unknown revisions (404), bad requests (422) and a server without opa (503)."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli_policy import opa_config
from domain.approvals import ApprovalRow
from ingest.embedded import StandInApprover, embedded_runtime
from ingest.policies import bundle_files
from tachograph.agents import AgentSpec
from tachograph.contract.canonical import loads
from tachograph.errors import PolicyDenied
from tachograph.policy import OpaClient
from tachograph.tools import ToolRegistry
from tests.harness import free_port
from tests.integration.api_support import Api, audit_reads, close_api, make_api, serving
from tests.integration.test_console_replay_form import _sign_in

pytestmark = pytest.mark.opa

ROOT = Path(__file__).resolve().parents[2]
REFUNDS = (ROOT / "tests" / "policies" / "refunds.rego").read_text()
STRICTER = REFUNDS.replace("approval_above := 100", "approval_above := 50").replace(
    "deny_above := 1000", "deny_above := 500")
TOOLS = ToolRegistry()
TOOLS.register("lookup", lambda a: {"order": a["order"]}, "read")
TOOLS.register("refund", lambda a: {"refunded": a["amount"]}, "write")
AMOUNTS = {"o-40": 40, "o-60": 60, "o-300": 300, "o-800": 800, "o-700": 700, "o-5000": 5000}


def refunder(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Looks the order up, then refunds; a denial ends the run escalated."""
    ctx.tool("lookup", {"order": input["order"]})
    try:
        done = ctx.tool("refund", {"order": input["order"], "amount": input["amount"]})
    except PolicyDenied as e:
        return {"outcome": "escalated", "denied": e.reason}
    return {"refunded": done["refunded"]}


AGENT = AgentSpec("tests.integration.test_api_policy_replays:refunder", refunder, TOOLS, {},
                  "refunds", {"id": "refund-agent", "version": "1.0.0"})


def person(row: ApprovalRow) -> tuple[str, str | None]:
    """Approves the refunds of 300 and 800, rejects the others."""
    return ("approved", None) if ("300" in row.summary or "800" in row.summary) else ("rejected", "no")


def publish(a: Api, rego: str, activate: bool) -> str:
    r = a.client.post("/v1/policy/revisions", headers=a.auth("admin"),
                      json={"files": {"refunds.rego": rego}, "activate": activate})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["revision"])


def start(a: Api, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    return a.client.post("/v1/replays", json=body,
                         headers={"Authorization": f"Bearer {key}"} if key else a.auth("engineer"))


def finished(a: Api, replay_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        r = a.client.get(f"/v1/replays/{replay_id}", headers=a.auth("engineer"))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = loads(r.content)
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opa_bin: Path,
             opa_server: Any) -> Iterator[tuple[Api, str, str]]:
    """acme with six refund runs recorded under revision 1 (in force, OPA downloading it from the
    API) and revision 2 published, not in force; (api, revision 1, revision 2)."""
    monkeypatch.setenv("TACHO_OPA_BIN", str(opa_bin))  # the app under test runs this opa
    a = make_api(tmp_path)
    r1 = publish(a, REFUNDS, activate=True)
    with serving(a.app, free_port()) as url:
        config = tmp_path / "opa.json"
        config.write_text(json.dumps(opa_config(url, a.secrets["publisher"], decision_logs=False)))
        opa = opa_server(config=config)
        deadline = time.monotonic() + 30
        while httpx.get(f"{opa.url}/health?bundles").status_code != 200:
            assert time.monotonic() < deadline, "OPA never activated the bundle"
            time.sleep(0.05)
        with StandInApprover(a.ledger, "acme", "Pat Approver", person), \
                embedded_runtime(a.ledger, "acme", policy=OpaClient(opa.url), approval_timeout_s=30) as rt:
            for order, amount in AMOUNTS.items():
                rt.run(AGENT, {"order": order, "amount": amount}, run_id=f"refund-{order}")
        opa.stop()  # before the server: it holds OPA's long poll
    r2 = publish(a, STRICTER, activate=False)
    yield a, r1, r2
    close_api(a)


def test_a_stricter_revision_is_tried_over_http_and_its_report_is_stored_listed_and_shown(
        recorded: tuple[Api, str, str]) -> None:
    a, r1, r2 = recorded
    r = start(a, {"mode": "policy", "policy_revision": r2, "workflow": "refunds",
                  "max_new_denials": 0, "max_new_approvals": "10%"})
    assert r.status_code == 202, r.text
    rid = r.json()["replay_id"]
    assert r.headers["location"] == f"/v1/replays/{rid}"
    assert (r.json()["mode"], r.json()["candidate"], r.json()["agent"]) == ("policy", f"policy revision {r2}", None)
    body = finished(a, rid)
    assert body["status"] == "finished", body["error"]
    assert body["passed"] is False and body["progress"] == {"done": 6, "total": 6}
    report = body["report"]
    s = report["summary"]
    assert s["runs"] == 6 and s["candidate_revisions"] == [r2]
    # of the refunds that ran (40, 60, 300, 800), 60 now needs a person and 800 would be denied
    changed = {c["arguments"]["amount"]: (c["before"], c["after"]) for run in report["runs"] for c in run["changed"]}
    assert changed[60] == ("allow", "require_approval") and changed[800] == ("require_approval", "deny")
    assert 40 not in changed and 300 not in changed
    assert s["new_approvals"] == 1 and s["new_denials"] >= 1 and s["new_allows"] == 0
    assert s["evaluated"] == s["new_denials"] + s["new_approvals"] + s["new_allows"] + s["unchanged"] >= 10
    assert report["gate"]["failures"][0].startswith(
        f"new denials: {s['new_denials']} of {s['evaluated']} actions") and len(report["gate"]["failures"]) == 1
    assert report["workspace"] == "acme" and report["mode"] == "policy"
    # the runs were recorded under revision 1, served by the API to OPA
    recorded_revs = {loads(row.data)["event"]["data"].get("revision")
                     for order in AMOUNTS for row in a.ledger.store.run_entries("acme", f"refund-{order}")
                     if row.event_type == "policy.evaluated"}
    assert recorded_revs == {r1}
    # revision 2 is still not in force
    assert a.client.get("/v1/policy", headers=a.auth("admin")).json()["active"]["revision"] == r1

    listed = {j["replay_id"]: j for j in a.client.get("/v1/replays", headers=a.auth("engineer")).json()["replays"]}
    assert (listed[rid]["mode"], listed[rid]["passed"], listed[rid]["status"]) == ("policy", False, "finished")
    starts = [rec["data"] for rec in audit_reads(a) if rec["data"].get("action") == "replay.start"]
    assert any(d.get("target", d).get("policy_revision") == r2 for d in starts), starts

    _sign_in(a, "engineer")
    page = html.unescape(a.client.get(f"/console/replays/{rid}").text)
    assert "policy what-if" in page and r2 in page and 'id="policy-changes"' in page
    assert "require_approval</td><td><b>deny</b>" in page

    # a lenient gate passes; exact runs, another workspace's key sees none of it
    lenient = start(a, {"mode": "policy", "policy_revision": r2, "runs": ["refund-o-60", "refund-o-800"],
                        "max_new_denials": "50%", "max_new_approvals": 1})
    body = finished(a, lenient.json()["replay_id"])
    assert body["passed"] is True and body["report"]["summary"]["evaluated"] == 4
    globex = a.key("globex", "engineer")
    assert a.client.get(f"/v1/replays/{rid}", headers={"Authorization": f"Bearer {globex}"}).status_code == 404
    theirs = start(a, {"mode": "policy", "policy_revision": r2, "workflow": "refunds"}, key=globex)
    assert theirs.status_code == 404 and "no policy revision" in theirs.json()["message"]


def test_an_unknown_revision_is_404_and_bad_requests_are_422(recorded: tuple[Api, str, str]) -> None:
    a, r1, r2 = recorded
    r = start(a, {"mode": "policy", "policy_revision": "9-000000000000", "workflow": "refunds"})
    assert r.status_code == 404 and "no policy revision '9-000000000000'" in r.json()["message"]
    policy = {"mode": "policy", "policy_revision": r2, "workflow": "refunds"}
    refused = [  # (body, words the 422 names)
        ({"mode": "policy", "workflow": "refunds"}, "needs `policy_revision`"),
        ({**policy, "policy_revision": "../../etc/passwd"}, "body.policy_revision"),
        ({**policy, "policy_revision": "http://127.0.0.1:8181/"}, "body.policy_revision"),
        ({**policy, "agent": "examples.triage:triage"}, "agent: a policy replay re-asks"),
        ({**policy, "model": "sim-large-v2"}, "it runs no agent code and calls no model"),
        ({**policy, "max_outcome_change": 0}, "max_outcome_change: a policy replay"),
        ({**policy, "max_new_denials": "150%"}, "max_new_denials must be a count"),
        ({**policy, "max_new_denials": "lots"}, "body.max_new_denials"),
        ({**policy, "max_new_approvals": -1}, "body.max_new_approvals"),
        ({"mode": "policy", "policy_revision": r2}, "give `workflow` or `runs`"),
        ({"agent": "examples.triage:triage", "workflow": "refunds", "policy_revision": r1},
         "policy_revision: only a policy replay"),
    ]
    for body, words in refused:
        r = start(a, body)
        assert r.status_code == 422, (body, r.text)
        assert words in r.json()["message"], (words, r.text)
    assert a.client.get("/v1/replays", headers=a.auth("engineer")).json()["replays"] == []


def test_a_server_without_opa_answers_503_naming_what_is_missing(
        recorded: tuple[Api, str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a, _, r2 = recorded
    body = {"mode": "policy", "policy_revision": r2, "workflow": "refunds"}
    monkeypatch.setenv("TACHO_OPA_BIN", str(tmp_path / "no-opa-here"))
    r = start(a, body)
    assert r.status_code == 503 and "is not an executable file" in r.json()["message"]
    monkeypatch.delenv("TACHO_OPA_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    r = start(a, body)
    assert r.status_code == 503, r.text
    assert "it has no opa binary (install Open Policy Agent on its PATH, or set TACHO_OPA_BIN)" in r.json()["message"]


def _tacho(data_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tacho ARGS` run from ``cwd`` (this checkout's code whatever the directory)."""
    env = {**os.environ, "TACHO_DATA_DIR": str(data_dir), "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_tacho_replay_takes_a_revision_of_the_local_ledger_and_a_path_wins(
        recorded: tuple[Api, str, str], tmp_path: Path) -> None:
    a, r1, r2 = recorded
    data_dir = a.data_dir
    a.services.replays.wait()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = _tacho(data_dir, cwd, "replay", "--policy", r2, "--workflow", "refunds", "--max-new-denials", "0",
                 "--id", "rp-rev", "--json")
    assert out.returncode == 1, out.stderr  # the gate fails
    report = json.loads(out.stdout)
    assert report["candidate"] == f"policy revision {r2}" and report["summary"]["candidate_revisions"] == [r2]
    assert report["summary"]["new_denials"] >= 1 and report["summary"]["new_approvals"] == 1
    shown = json.loads(_tacho(data_dir, cwd, "replay", "show", "rp-rev", "--json").stdout)
    assert shown["summary"] == report["summary"]
    # the same as the revision's files given as a bundle directory
    bundle = tmp_path / "bundle"
    for path, content in bundle_files(a.services.policies.revision("acme", r2), "acme").items():
        bundle.mkdir(exist_ok=True)
        (bundle / path).write_bytes(content)
    as_path = _tacho(data_dir, cwd, "replay", "--policy", str(bundle), "--workflow", "refunds", "--json")
    assert json.loads(as_path.stdout)["summary"] == report["summary"]

    # a directory by the same name wins: here it holds revision 1's policy, which changes nothing
    (cwd / r2).mkdir()
    for path, content in bundle_files(a.services.policies.revision("acme", r1), "acme").items():
        (cwd / r2 / path).write_bytes(content)
    out = _tacho(data_dir, cwd, "replay", "--policy", r2, "--workflow", "refunds", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["candidate"] == f"policy {r2}" and report["summary"]["candidate_revisions"] == [r1]
    assert report["summary"]["unchanged"] == report["summary"]["evaluated"] >= 10

    out = _tacho(data_dir, cwd, "replay", "--policy", "9-000000000000", "--workflow", "refunds")
    assert out.returncode == 2 and "workspace acme has no policy revision 9-000000000000" in out.stderr
