"""``/v1/halts``: who may read and change halts, ETags and 304, targets of any shape, bounds, and
one workspace never seeing another's."""

from __future__ import annotations

import re

import pytest

from api.keys_store import ROLES
from tachograph.contract.canonical import loads
from tachograph.halts import halt_path
from tests.integration.api_support import Api, api

__all__ = ["api"]

TARGETS = ["billing/ops", "..", ".", "../../etc/passwd", "a/../b", "/lead", "trail/", "a//b", "100%",
           "a%2Fb", "q?x=1#f", "space name", "émoji ☃/ü"]
# Starlette's TestClient decodes the path twice, so a target holding an escape such as "%2F" only
# round-trips through a real server: tests/e2e/test_halts_across_hosts.py sends every target above
IN_PROCESS = [t for t in TARGETS if not re.search("%[0-9A-Fa-f]{2}", t)]


def _put(a: Api, role: str, scope: str, target: str | None, reason: str = "why", **kw):
    return a.client.put(halt_path(scope, target), json={"reason": reason}, headers=a.auth(role), **kw)


def _delete(a: Api, role: str, scope: str, target: str | None, body: dict | None = None):
    return a.client.request("DELETE", halt_path(scope, target), json=body, headers=a.auth(role))


def _halts(a: Api, role: str = "publisher") -> dict:
    r = a.client.get("/v1/halts", headers=a.auth(role))
    assert r.status_code == 200, r.text
    return r.json()


def test_publishers_and_people_read_approvers_and_admins_change_and_no_one_else(api: Api) -> None:
    readers = {"publisher", "engineer", "approver", "admin"}
    writers = {"approver", "admin"}
    for role in ROLES:
        assert api.client.get("/v1/halts", headers=api.auth(role)).status_code == (200 if role in readers else 403)
        put = _put(api, role, "workflow", f"wf-{role}")
        assert put.status_code == (201 if role in writers else 403), (role, put.text)
        gone = _delete(api, role, "workflow", f"wf-{role}")
        assert gone.status_code == (200 if role in writers else 403), (role, gone.text)
    refused = _put(api, "engineer", "workflow", "x")
    assert "needs one of: admin, approver" in refused.json()["message"]
    assert api.client.get("/v1/halts").status_code == 401


def test_a_halt_is_listed_with_an_etag_that_answers_304_until_the_halts_change(api: Api) -> None:
    first = api.client.get("/v1/halts", headers=api.auth("publisher"))
    etag = first.headers["etag"]
    assert first.json() == {"workspace": "acme", "etag": etag, "halts": []}
    same = api.client.get("/v1/halts", headers={**api.auth("publisher"), "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    put = _put(api, "admin", "workflow", "refunds", "refunds misfiring")
    assert put.status_code == 201
    changed = api.client.get("/v1/halts", headers={**api.auth("publisher"), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    (halt,) = changed.json()["halts"]
    assert halt == {**put.json()["halt"], "index": put.json()["record_index"]}
    assert halt["scope"] == "workflow" and halt["target"] == "refunds" and halt["reason"] == "refunds misfiring"
    again = api.client.get("/v1/halts", headers={**api.auth("publisher"),
                                                  "If-None-Match": f'"other", W/{changed.headers["etag"]}'})
    assert again.status_code == 304
    assert api.client.get("/v1/halts", headers={**api.auth("engineer"), "If-None-Match": "*"}).status_code == 304


@pytest.mark.parametrize("target", IN_PROCESS)
def test_any_workflow_name_works_as_a_target_when_encoded(api: Api, target: str) -> None:
    put = _put(api, "admin", "workflow", target)
    assert put.status_code == 201, put.text
    assert put.json()["halt"]["target"] == target
    assert [(h["scope"], h["target"]) for h in _halts(api)["halts"]] == [("workflow", target)]
    assert _put(api, "approver", "agent", target).json()["halt"]["target"] == target
    gone = _delete(api, "approver", "workflow", target, {"reason": "fixed"})
    assert gone.status_code == 200 and gone.json()["halt"]["target"] == target
    assert [(h["scope"], h["target"]) for h in _halts(api)["halts"]] == [("agent", target)]


def test_run_ids_with_dots_work_and_the_workspace_scope_needs_no_target(api: Api) -> None:
    for run_id in ("..", ".", "run:1.2"):
        assert _put(api, "admin", "run", run_id).status_code == 201
    ws = _put(api, "approver", "workspace", None, "freeze everything")
    assert ws.status_code == 201 and ws.json()["halt"]["target"] == "acme"
    assert [h["scope"] for h in _halts(api)["halts"]] == ["workspace", "run", "run", "run"]
    assert _delete(api, "admin", "workspace", None).status_code == 200
    assert _delete(api, "admin", "run", "..").status_code == 200
    assert sorted(h["target"] for h in _halts(api)["halts"]) == [".", "run:1.2"]


def test_setting_again_is_200_unchanged_and_clearing_a_missing_halt_is_404(api: Api) -> None:
    first = _put(api, "admin", "agent", "bot", "first reason")
    again = _put(api, "approver", "agent", "bot", "second reason")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["changed"] is False and again.json()["record_index"] is None
    assert again.json()["halt"] == first.json()["halt"]
    assert _delete(api, "admin", "agent", "bot").status_code == 200
    missing = _delete(api, "admin", "agent", "bot")
    assert missing.status_code == 404 and "no halt on agent 'bot'" in missing.json()["message"]


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/v1/halts/tenant/x", {"reason": "why"}, "unknown halt scope 'tenant'; one of: workspace, workflow, agent, run"),
    ("/v1/halts/tenant", {"reason": "why"}, "one of: workspace, workflow, agent, run"),
    ("/v1/halts/workflow/" + "w" * 513, {"reason": "why"}, "is not a workflow name: 1-512 characters"),
    ("/v1/halts/run/" + "r" * 129, {"reason": "why"}, "is not a run id"),
    ("/v1/halts/run/a%2Fb", {"reason": "why"}, "is not a run id"),
    ("/v1/halts/workflow", {"reason": "why"}, "scope workflow needs a target"),
    ("/v1/halts/workflow/", {"reason": "why"}, "scope workflow needs a target"),
    ("/v1/halts/workspace/globex", {"reason": "why"}, "scope workspace takes no target"),
    ("/v1/halts/workflow/w", {"reason": " "}, "say why"),
    ("/v1/halts/workflow/w", {"reason": "x" * 2001}, "reason"),
    ("/v1/halts/workflow/w", {}, "reason"),
    ("/v1/halts/workflow/w", {"reason": "why", "scope": "run"}, "scope"),
])
def test_a_bad_halt_request_is_422_naming_the_problem_and_writes_nothing(api: Api, path, body, needle) -> None:
    size = api.ledger.store.size()
    r = api.client.put(path, json=body, headers=api.auth("admin"))
    assert r.status_code == 422 and needle in r.json()["message"], r.text
    assert api.ledger.store.size() == size


def test_another_workspaces_halts_are_invisible_and_out_of_reach(api: Api) -> None:
    assert _put(api, "admin", "workflow", "refunds").status_code == 201
    globex_admin = {"Authorization": f"Bearer {api.key('globex', 'admin')}"}
    globex_pub = {"Authorization": f"Bearer {api.key('globex', 'publisher')}"}
    theirs = api.client.get("/v1/halts", headers=globex_pub).json()
    assert theirs["workspace"] == "globex" and theirs["halts"] == []
    gone = api.client.request("DELETE", halt_path("workflow", "refunds"), headers=globex_admin)
    assert gone.status_code == 404
    assert api.client.put(halt_path("workspace"), json={"reason": "x"}, headers=globex_admin).status_code == 201
    assert [h["scope"] for h in _halts(api)["halts"]] == ["workflow"]  # acme: only its own


def test_every_change_is_a_platform_record_an_auditor_reads_in_the_audit_log(api: Api) -> None:
    put = _put(api, "admin", "workflow", "a/b", "misfiring")
    gone = _delete(api, "approver", "workflow", "a/b", {"reason": "fixed"})
    rows = {r.index: loads(r.data)["record"] for r in api.ledger.store.records("acme", limit=100)}
    set_rec, clear_rec = rows[put.json()["record_index"]], rows[gone.json()["record_index"]]
    assert set_rec["type"] == "halt.set" and set_rec["data"]["target"] == "a/b"
    assert set_rec["actor"]["role"] == "admin" and set_rec["data"]["via"] == "api"
    assert clear_rec["type"] == "halt.cleared" and clear_rec["data"]["reason"] == "fixed"
    assert clear_rec["actor"]["role"] == "approver"
    log = api.client.get("/v1/audit-log?type=halt.set", headers=api.auth("auditor")).json()
    assert [r["index"] for r in log["records"]] == [put.json()["record_index"]]
