"""The console's policy pages in real headless Chromium, with a real OPA that downloads the policy
in force from the console's own server (its bundle API), a runtime that asks it, and an auditor
who follows a recorded decision to the revision that judged it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from api.cli_policy import opa_config
from ingest.embedded import embedded_runtime
from tachograph.agents import AgentSpec
from tachograph.errors import PolicyDenied
from tachograph.policy import OpaClient
from tachograph.tools import ToolRegistry
from tests.e2e.console_support import WS, shot, sign_in, text_of, wait_for

POLICIES = Path(__file__).resolve().parents[1] / "policies"
REFUNDS = (POLICIES / "refunds.rego").read_text()
STRICTER = REFUNDS.replace("deny_above := 1000", "deny_above := 500")
TOOLS = ToolRegistry()
TOOLS.register("refund", lambda a: {"refunded": a["amount"]}, "write",
               simulator=lambda a: {"refunded": a["amount"]})


def refunder(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """Refunds; a denial is handled (the run escalates)."""
    try:
        return {"refunded": ctx.tool("refund", {"order": input["order"], "amount": input["amount"]})}
    except PolicyDenied as e:
        return {"outcome": "escalated", "denied": e.reason}


AGENT = AgentSpec("tests.e2e.test_console_policies:refunder", refunder, TOOLS, {}, "refunds",
                  {"id": "refund-agent", "version": "2.0.0"})


def _publish(server, files: dict[str, str], **kw: Any) -> str:
    r = httpx.post(server.url + "/v1/policy/revisions", json={"files": files, "activate": True, **kw},
                   headers={"Authorization": f"Bearer {server.secrets['admin']}"})
    assert r.status_code == 201, r.text
    return str(r.json()["revision"])


def _opa_pulling_from(server, opa_server, tmp_path: Path):
    """OPA configured as ``tacho policy opa-config`` prints it, loading the bundle from the console's
    server with the publisher key; returned once the bundle is active."""
    config = opa_config(server.url, server.secrets["publisher"], decision_logs=False, long_poll_s=1)
    path = tmp_path / "opa.json"
    path.write_text(json.dumps(config))
    opa = opa_server(config=path)
    wait_for(None, lambda _: httpx.get(opa.url + "/health?bundles").status_code == 200, timeout=30)
    return opa


def test_an_auditor_sees_the_policy_in_force_diffs_it_and_follows_a_decision_to_its_revision(
        browser, console_server, opa_server, tmp_path):
    server = console_server
    first = _publish(server, {"refunds.rego": REFUNDS}, message="refund limits", reason="first limits")
    second = _publish(server, {"refunds.rego": STRICTER}, message="deny refunds above 500",
                      reason="chargebacks doubled in May", fail_closed=["read", "write"])
    opa = _opa_pulling_from(server, opa_server, tmp_path)
    with embedded_runtime(server.ledger, WS, policy=OpaClient(opa.url)) as rt:
        denied = rt.run(AGENT, {"order": "o-7", "amount": 800})
    opa.stop()
    (decision,) = [e["data"] for e in denied.events if e["type"] == "policy.evaluated"]
    assert (decision["decision"], decision["revision"]) == ("deny", second)  # OPA ran what we serve

    sign_in(browser, server, "auditor", "/console/policies")
    assert browser.find_element(By.ID, "active-revision").text == second
    assert "chargebacks doubled in May" in browser.find_element(By.ID, "active-reason").text
    assert browser.find_element(By.ID, "active-fail-closed").text.startswith("read, write")
    assert server.identity("admin") in browser.find_element(By.ID, "active-activation").text
    history = browser.find_elements(By.CSS_SELECTOR, "#policy-history tr.activation")
    assert [h.get_attribute("data-revision") for h in history] == [second, first]
    assert "first limits" in history[1].text and first in history[0].text  # previous of the newest
    states = {r.get_attribute("id"): r.find_element(By.CSS_SELECTOR, ".state").text
              for r in browser.find_elements(By.CSS_SELECTOR, "#policy-revisions tr.revision")}
    assert states == {f"revision-{second}": "in force", f"revision-{first}": "was in force"}
    shot(browser, "policies")

    # the diff, chosen in the form: the changed line in green, the old one in red
    Select(browser.find_element(By.ID, "diff-from")).select_by_value(first)
    Select(browser.find_element(By.ID, "diff-to")).select_by_value(second)
    browser.find_element(By.ID, "diff-submit").click()
    wait_for(browser, lambda d: "/console/policies/diff?" in d.current_url)
    card = browser.find_element(By.CSS_SELECTOR, ".policy-file[data-path='refunds.rego']")
    assert card.find_element(By.CLASS_NAME, "file-status").text == "changed"
    added = card.find_element(By.CSS_SELECTOR, "pre.udiff .add")
    removed = card.find_element(By.CSS_SELECTOR, "pre.udiff .del")
    assert (added.text, removed.text) == ("+deny_above := 500", "-deny_above := 1000")
    assert added.value_of_css_property("background-color") == "rgba(230, 255, 236, 1)"  # green
    assert removed.value_of_css_property("background-color") == "rgba(255, 235, 233, 1)"  # red
    assert "changed" in browser.find_element(By.ID, "diff-fail-closed").get_attribute("class")
    shot(browser, "policy-diff")

    # the run's timeline: the decision links to the revision that judged it
    browser.get(server.url + f"/console/runs/{denied.run_id}")
    link = browser.find_element(By.CSS_SELECTOR, ".t-policy-evaluated a.revision-link")
    assert link.text == second
    link.click()
    text_of(browser, "revision-title", second)
    assert browser.find_element(By.ID, "revision-state").text == "in force"
    source = browser.find_element(By.CSS_SELECTOR, ".policy-source[data-path='refunds.rego'] pre.source")
    assert "deny_above := 500" in source.text and "mono" in source.value_of_css_property("font-family").lower()
    browser.find_element(By.ID, "diff-previous").click()
    wait_for(browser, lambda d: f"from={first}" in d.current_url and f"to={second}" in d.current_url)
    browser.get(server.url + f"/console/policies/revisions/{first}")
    assert browser.find_element(By.ID, "revision-state").text == "was in force"
    shot(browser, "policy-revision")


def test_forged_revision_ids_in_the_url_are_clear_error_pages(browser, console_server):
    server = console_server
    sign_in(browser, server, "engineer", "/console/policies")
    for path, status, says in [
        ("/console/policies/revisions/..%2F..%2Fruns", "422", "is not a revision id"),
        ("/console/policies/revisions/../x", "404", "there is no console page"),  # Chromium folds ../
        ("/console/policies/revisions/7-0123456789ab", "404", "has no policy revision '7-0123456789ab'"),
        ("/console/policies/diff?from=..%2Fx&to=7-0123456789ab", "422", "from '../x' is not a revision id"),
    ]:
        browser.get(server.url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text.startswith(status), path
        assert says in browser.find_element(By.ID, "error-message").text, path
        assert browser.find_element(By.LINK_TEXT, "Policies")  # still inside the console
