"""The console's policy pages over real ASGI: the revision in force and its history, every
revision's files (escaped), diffs, roles, ill-formed and unknown revision ids as error pages,
and the run timeline linking a decision to the revision that judged it."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from tests.factories import event
from tests.integration.api_support import Api, api, audit_reads, publish

__all__ = ["api"]  # the fixture

POLICIES = Path(__file__).resolve().parents[1] / "policies"
REFUNDS = (POLICIES / "refunds.rego").read_text()
STRICTER = REFUNDS.replace("deny_above := 1000", "deny_above := 500")
HOSTILE = '# </pre><script>alert("x")</script>\npackage extra\n\nok := true\n'


def _revision(api: Api, files: dict[str, str], **kw: object) -> str:
    r = api.client.post("/v1/policy/revisions", json={"files": files, **kw}, headers=api.auth("admin"))
    assert r.status_code == 201, r.text
    return str(r.json()["revision"])


def _sign_in(api: Api, role: str) -> None:
    page = api.client.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = api.client.post("/console/login", data={"api_key": api.secrets[role], "csrf": token},
                        follow_redirects=False)
    assert r.status_code == 303, r.text


@pytest.fixture
def two(api: Api) -> tuple[str, str]:
    """Revision 1 activated, then revision 2 (stricter, one more file, fail closed on reads
    too) activated in its place."""
    first = _revision(api, {"refunds.rego": REFUNDS}, message="refund limits", activate=True,
                      reason="first limits")
    second = _revision(api, {"refunds.rego": STRICTER, "extra.rego": HOSTILE}, message="tighter",
                       activate=True, reason="chargebacks up", fail_closed=["read", "write"])
    return first, second


def test_the_policies_page_shows_the_revision_in_force_its_history_and_every_revision(
        api: Api, two: tuple[str, str]) -> None:
    first, second = two
    third = _revision(api, {"refunds.rego": REFUNDS.replace("100", "50")}, message="never used")
    _sign_in(api, "auditor")
    r = api.client.get("/console/policies")
    assert r.status_code == 200
    text = html.unescape(r.text)
    assert f'<a class="mono" id="active-revision" href="/console/policies/revisions/{second}">{second}</a>' in text
    assert "chargebacks up" in text and "read, write" in text
    assert "not checked (the server had no opa binary)" in text or "opa " in text
    history = re.findall(r'<tr class="activation" data-revision="([^"]+)"', text)
    assert history == [second, first]  # newest first
    states = re.findall(r'id="revision-([^"]+)">.*?<span class="pill state[^"]*">([^<]+)</span>', text, re.S)
    assert states == [(third, "never in force"), (second, "in force"), (first, "was in force")]
    assert f"/console/policies/diff?from={first}&amp;to={second}" in r.text  # diff with previous
    assert f"/console/policies/diff?to={first}" in r.text  # the first: diff from nothing
    assert '<a href="/console/policies" class="active">Policies</a>' in r.text
    # showing the rules is not an audited read (like GET /v1/policy/revisions)
    assert not [x for x in audit_reads(api) if "polic" in x["data"]["action"]]


def test_a_revision_page_shows_its_files_escaped_and_when_it_was_in_force(api: Api, two: tuple[str, str]) -> None:
    first, second = two
    _sign_in(api, "engineer")
    r = api.client.get(f"/console/policies/revisions/{second}")
    assert r.status_code == 200
    assert "<script>alert" not in r.text  # the source is text, never markup
    assert "&lt;/pre&gt;&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in r.text
    assert html.escape("deny_above := 500") in r.text
    assert re.search(r'id="revision-state">in force<', r.text)
    assert f"/console/policies/diff?from={first}&amp;to={second}" in r.text
    old = api.client.get(f"/console/policies/revisions/{first}").text
    assert re.search(r'id="revision-state">was in force<', old)
    periods = old.split('id="revision-periods"')[1].split("</table>")[0]
    assert "first limits" in periods and f">{second}</a>" in periods  # replaced by the second
    assert f"/console/policies/diff?from={first}&amp;to={second}" in old  # diff with the one in force


def test_the_diff_page_marks_added_and_removed_lines_and_each_files_status(api: Api, two: tuple[str, str]) -> None:
    first, second = two
    _sign_in(api, "admin")
    r = api.client.get("/console/policies/diff", params={"from": first, "to": second})
    assert r.status_code == 200
    files = dict(re.findall(r'data-path="([^"]+)" data-status="([^"]+)"', r.text))
    assert files == {"extra.rego": "added", "refunds.rego": "changed"}
    assert '<span class="del">-deny_above := 1000</span>' in r.text
    assert '<span class="add">+deny_above := 500</span>' in r.text
    assert '<span class="add">+# &lt;/pre&gt;&lt;script&gt;' in r.text
    assert re.search(r'<tr class="changed" id="diff-fail-closed"><td>fail closed</td><td>write</td><td>read, write</td>',
                     r.text)
    same = api.client.get("/console/policies/diff", params={"from": second, "to": second}).text
    assert set(re.findall(r'data-status="([^"]+)"', same)) == {"same"}
    nothing = api.client.get("/console/policies/diff", params={"to": first}).text
    assert re.findall(r'data-status="([^"]+)"', nothing) == ["added"]
    assert "Choose the two revisions" in api.client.get("/console/policies/diff").text


@pytest.mark.parametrize(("path", "status", "says"), [
    ("/console/policies/revisions/..%2Fx", 422, "&#39;../x&#39; is not a revision id"),
    ("/console/policies/revisions/..%2F..%2Fruns", 422, "is not a revision id"),
    ("/console/policies/revisions/9-aaaaaaaaaaaa", 404, "has no policy revision &#39;9-aaaaaaaaaaaa&#39;"),
    ("/console/policies/revisions/" + "1" * 5000, 422, "is not a revision id"),
    ("/console/policies/diff?to=..%2Fx", 422, "to &#39;../x&#39; is not a revision id"),
    ("/console/policies/diff?to=1-000000000000&from=%3Cb%3E", 422, "from &#39;&lt;b&gt;&#39; is not"),
    ("/console/policies/diff?to=9-aaaaaaaaaaaa", 404, "has no policy revision"),
    ("/console/policies/x", 404, "there is no console page"),
])
def test_ill_formed_and_unknown_revision_ids_are_clear_error_pages(
        api: Api, two: tuple[str, str], path: str, status: int, says: str) -> None:
    _sign_in(api, "auditor")
    r = api.client.get(path)
    assert r.status_code == status and r.headers["content-type"].startswith("text/html")
    assert says in r.text and 'id="error-message"' in r.text
    assert "Policies</a>" in r.text  # the console's page, with its navigation


def test_another_workspaces_revision_is_not_found(api: Api, two: tuple[str, str]) -> None:
    other = api.key("globex", "admin")
    r = api.client.post("/v1/policy/revisions", json={"files": {"a.rego": "package a\n"}},
                        headers={"Authorization": f"Bearer {other}"})
    theirs = r.json()["revision"]
    _sign_in(api, "auditor")
    assert api.client.get(f"/console/policies/revisions/{theirs}").status_code == 404
    assert api.client.get("/console/policies/diff", params={"to": theirs}).status_code == 404


@pytest.mark.parametrize("role", ["approver", "analyst"])
def test_roles_without_read_policy_get_no_link_and_a_403_page(api: Api, two: tuple[str, str], role: str) -> None:
    _sign_in(api, role)
    r = api.client.get("/console/policies")
    assert r.status_code == 403 and "auditor" in r.text and "engineer" in r.text
    assert 'href="/console/policies"' not in r.text
    assert api.client.get(f"/console/policies/revisions/{two[1]}").status_code == 403


def test_a_timeline_links_a_decision_to_its_revision_only_when_it_is_the_workspaces_own(
        api: Api, two: tuple[str, str]) -> None:
    first, second = two
    decide = {"policy": "tachograph/decision", "action": "refund", "decision": "deny", "reason": "over"}
    publish(api, [
        event("judged", 0),
        event("judged", 1, "policy.evaluated", {**decide, "revision": second, "decision_id": "d-1"}),
        event("judged", 2, "policy.evaluated", {**decide, "revision": "r7"}),
        event("judged", 3, "policy.evaluated", {**decide, "revision": f"authz=r7,tachograph={first}"}),
        event("judged", 4, "policy.evaluated", {**decide, "revision": "../../console/logout"}),
    ])
    _sign_in(api, "auditor")
    page = api.client.get("/console/runs/judged").text
    links = re.findall(r'class="mono revision-link" href="([^"]+)">([^<]+)<', page)
    assert links == [(f"/console/policies/revisions/{second}", second),
                     (f"/console/policies/revisions/{first}", f"tachograph={first}")]
    texts = re.findall(r'class="mono revision-text">([^<]+)<', page)
    assert texts == ["r7", "authz=r7", "../../console/logout"]
    assert "OPA decision <span class=\"mono\">d-1</span>" in page
    assert api.client.get(links[0][0]).status_code == 200

    api.client.cookies.clear()
    _sign_in(api, "approver")  # may read the run, not the policies: the revision is text
    page = api.client.get("/console/runs/judged").text
    assert "revision-link" not in page and f'class="mono revision-text">{second}<' in page
