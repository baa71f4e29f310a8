"""The operator console in real headless Chromium against a uvicorn server on 127.0.0.1."""

from __future__ import annotations

import re

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from domain.evidence import verify_evidence
from domain.origins import PRODUCTION, REPLAY, origin_of_entry
from domain.verify import verify_log
from ingest.embedded import embedded_runtime
from ingest.halts import LedgerHalts
from projections.demo import analytics_path
from projections.projector import connect
from tachograph.agents import AgentSpec
from tachograph.contract.canonical import loads
from tachograph.tools import ToolRegistry
from tests.e2e.console_support import HOOKED_WORKFLOW, WS, shot, sign_in, text_of, wait_for


def _session_client(driver, server) -> httpx.Client:
    """An HTTP client carrying the browser's session cookie."""
    cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
    return httpx.Client(base_url=server.url, cookies=cookies)


def _runs_of_origin(server, origin: str, replay_id: str | None = None) -> set[str]:
    """Run ids of the workspace whose origin (``domain.origins``) is ``origin``."""
    out = set()
    for row in server.ledger.store.entries():
        if row.event_type == "run.started" and row.workspace == WS:
            found = origin_of_entry(loads(row.data))
            if found.origin == origin and (replay_id is None or found.replay_id == replay_id):
                out.add(row.run_id)
    return out


def _cells(element) -> list[str]:
    return [c.get_attribute("textContent").strip() for c in element.find_elements(By.TAG_NAME, "td")]


def test_the_runs_list_and_the_charts_show_production_runs_until_another_origin_is_chosen(
        browser, console_server):
    server = console_server
    production, replays = _runs_of_origin(server, PRODUCTION), _runs_of_origin(server, REPLAY)
    assert production and replays
    sign_in(browser, server, "engineer", "/console/runs")
    assert browser.find_element(By.ID, "runs-origin").text == "production runs"
    assert int(browser.find_element(By.ID, "total-runs").text) == len(production)
    assert not browser.find_elements(By.CSS_SELECTOR, "#runs-table .pill.origin")

    Select(browser.find_element(By.ID, "f-origin")).select_by_visible_text("replay")
    browser.find_element(By.ID, "apply-filters").click()
    wait_for(browser, lambda d: "origin=replay" in d.current_url)
    assert int(browser.find_element(By.ID, "total-runs").text) == len(replays)
    shown = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    assert shown and all(r.find_element(By.CSS_SELECTOR, ".pill.origin").text == "replay" for r in shown)
    assert {r.find_element(By.CSS_SELECTOR, "a.run-link").text for r in shown} <= replays

    browser.get(server.url + "/console/replays/whatif-large")
    browser.find_element(By.ID, "replay-runs-link").click()
    wait_for(browser, lambda d: "replay_id=whatif-large" in d.current_url)
    assert browser.find_element(By.ID, "runs-origin").text == "runs of replay whatif-large"
    assert int(browser.find_element(By.ID, "total-runs").text) == len(_runs_of_origin(server, REPLAY, "whatif-large"))

    sign_in(browser, server, "analyst", "/console/analytics")
    assert browser.find_element(By.ID, "charts-origin").text == "production runs"

    def charted_runs() -> int:  # runs in the table under the cost-over-time chart
        table = browser.find_element(By.CSS_SELECTOR, "figure.chart-card table")
        return sum(int(_cells(row)[2].replace(",", "")) for row in table.find_elements(By.CSS_SELECTOR, "tbody tr"))

    def projected(origin: str) -> int:  # the runs the projection holds (other tests add runs later)
        con = connect(analytics_path(server.data_dir), read_only=True, retries=20)
        try:
            return int(con.execute("SELECT count(*) FROM runs_all WHERE workspace = ? AND origin = ?",
                                   [WS, origin]).fetchall()[0][0])
        finally:
            con.close()

    assert charted_runs() == projected(PRODUCTION) > 0
    Select(browser.find_element(By.ID, "f-origin")).select_by_visible_text("replay")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(browser, lambda d: "origin=replay" in d.current_url)
    assert browser.find_element(By.ID, "charts-origin").text == "replay runs"
    assert charted_runs() == projected(REPLAY) > 0
    browser.get(server.url + "/console/analytics?origin=replays")
    assert "origin must be one of production, replay" in browser.page_source


def test_an_auditor_signs_in_filters_runs_opens_a_timeline_verifies_it_and_downloads_its_bundle(
        browser, console_server):
    server = console_server
    browser.get(server.url + "/console/runs")
    assert "/console/login" in browser.current_url  # no session: sign in first
    sign_in(browser, server, "auditor", "/console/runs")
    cookie = next(c for c in browser.get_cookies() if c["name"] == "tacho_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert server.identity("auditor") in browser.find_element(By.CLASS_NAME, "who").text
    shot(browser, "runs")

    browser.find_element(By.CSS_SELECTOR, "#f-outcome option[value='']")  # the filter is there
    browser.find_element(By.ID, "f-outcome").send_keys("failed")
    browser.find_element(By.ID, "apply-filters").click()
    wait_for(browser, lambda d: "outcome=failed" in d.current_url)
    outcomes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody .pill")]
    total = int(browser.find_element(By.ID, "total-runs").text)
    assert outcomes and set(outcomes) == {"failed"}
    production = _runs_of_origin(server, PRODUCTION)
    expected = sum(1 for r in server.ledger.store.entries()
                   if r.event_type == "run.completed" and b'"outcome":"failed"' in r.data
                   and r.workspace == WS and r.run_id in production)
    assert total == expected

    browser.get(server.url + "/console/runs?workflow=ticket-triage")
    first = browser.find_element(By.CSS_SELECTOR, "a.run-link")
    run_id = first.text
    first.click()
    wait_for(browser, lambda d: d.find_element(By.ID, "run-title").text == run_id)
    steps = browser.find_elements(By.CSS_SELECTOR, "#timeline li.step")
    assert [int(s.get_attribute("data-seq")) for s in steps] == [e["seq"] for e in server.events(run_id)]
    positions = browser.find_element(By.ID, "ledger-positions").text
    rows = server.ledger.store.run_entries(WS, run_id)
    assert f"entries {rows[0].index} … {rows[-1].index}" in positions

    browser.find_element(By.ID, "verify-run").click()
    verdict = text_of(browser, "verify-outcome", "erif")
    assert verdict.startswith("Verified:") and f"{len(rows)} entries" in verdict
    shot(browser, "run-timeline")

    with _session_client(browser, server) as client:
        bundle = client.get(f"/console/runs/{run_id}/evidence.json")
    assert bundle.status_code == 200 and "attachment" in bundle.headers["content-disposition"]
    assert verify_evidence(bundle.json(), [server.ledger.signer.vkey]).ok

    browser.get(server.url + "/console/ledger")
    size = server.ledger.store.size()
    browser.find_element(By.ID, "verify-ledger").click()
    wait_for(browser, lambda d: "Ledger verified" in d.find_element(By.ID, "verification").text)
    assert f"{size} entries" in browser.find_element(By.ID, "verification").text
    shot(browser, "ledger")

    actions = [a["action"] for a in server.console_actions() if a["key_id"] == server.key_ids["auditor"]]
    assert {"console.sign_in", "console.runs.list", "console.run.timeline", "console.run.verify",
            "console.run.evidence", "console.ledger.verify"} <= set(actions)


def test_an_approver_approves_and_rejects_pending_changes_and_the_ledger_names_them(browser, console_server):
    server = console_server
    sign_in(browser, server, "approver", "/console/approvals")
    card = browser.find_element(By.ID, "approval-ap-1")
    assert "high risk" in card.text and "credit_limit" in card.text and "2500" in card.text
    shot(browser, "approvals")

    card.find_element(By.CLASS_NAME, "reason").send_keys("customer verified by phone")
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    text_of(browser, "flash", "ap-1 of pend-approve approved")

    card = browser.find_element(By.ID, "approval-ap-2")
    card.find_element(By.CSS_SELECTOR, "button.reject").click()  # no reason: refused, nothing written
    text_of(browser, "flash", "say why you reject")
    assert [e["type"] for e in server.events("pend-reject")][-1] == "approval.requested"
    card = browser.find_element(By.ID, "approval-ap-2")
    card.find_element(By.CLASS_NAME, "reason").send_keys("limit too high for a silver customer")
    card.find_element(By.CSS_SELECTOR, "button.reject").click()
    text_of(browser, "flash", "ap-2 of pend-reject rejected")

    # the person's decisions are platform records: the console writes nothing into the agents' runs
    assert [e["type"] for e in server.events("pend-approve")][-1] == "approval.requested"
    assert [e["type"] for e in server.events("pend-reject")][-1] == "approval.requested"
    made = {r["data"]["approval_id"]: r for r in server.records("approval.decision")}
    assert made["ap-1"]["data"] == {"approval_id": "ap-1", "run_id": "pend-approve", "decision": "approved",
                                    "by": server.identity("approver"), "reason": "customer verified by phone"}
    assert made["ap-1"]["actor"]["key_id"] == server.key_ids["approver"]
    assert made["ap-2"]["data"]["decision"] == "rejected"
    assert made["ap-2"]["data"]["by"] == server.identity("approver")
    assert server.ledger.store.approval(WS, "ap-1").decided_by == server.identity("approver")
    decided = browser.find_element(By.ID, "decided").text
    assert "ap-1" in decided and "ap-2" in decided and server.identity("approver") in decided
    assert not browser.find_elements(By.ID, "approval-ap-1")
    shot(browser, "approvals-decided")
    recorded = [a for a in server.console_actions() if a["action"] == "console.approval.decide"]
    assert {a["target"]["approval_id"] for a in recorded} >= {"ap-1", "ap-2"}
    assert all(a["target"]["by"] == server.identity("approver") for a in recorded)

    # deciding again (a stale tab) is refused and records nothing
    with _session_client(browser, server) as client:
        page = client.get("/console/approvals").text
        csrf = re.search(r'X-CSRF-Token": "([^"]+)"', page).group(1)
        again = client.post("/console/approvals/decide",
                            data={"csrf": csrf, "run_id": "pend-approve", "approval_id": "ap-1",
                                  "decision": "rejected", "reason": "x"})
    assert again.status_code == 409 and "already decided" in again.text
    assert len(server.events("pend-approve")) == 5
    assert [r["data"]["approval_id"] for r in server.records("approval.decision")].count("ap-1") == 1


def test_a_form_posted_without_its_csrf_token_or_from_another_origin_is_refused(browser, console_server):
    server = console_server
    sign_in(browser, server, "approver", "/console/approvals")
    before = len(server.events("pend-nocsrf"))
    card = browser.find_element(By.ID, "approval-ap-3")
    browser.execute_script("arguments[0].querySelector('input[name=csrf]').remove()", card)
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    text_of(browser, "error-message", "CSRF")
    assert "403" in browser.title
    with _session_client(browser, server) as client:
        csrf = re.search(r'X-CSRF-Token": "([^"]+)"', client.get("/console/approvals").text).group(1)
        forged = client.post("/console/approvals/decide", data={"csrf": csrf, "decision": "approved",
                             "run_id": "pend-nocsrf", "approval_id": "ap-3"},
                             headers={"Origin": "http://evil.example"})
        wrong = client.post("/console/approvals/decide", data={"csrf": "x" * 43, "decision": "approved",
                                                             "run_id": "pend-nocsrf", "approval_id": "ap-3"})
    assert forged.status_code == 403 and wrong.status_code == 403
    login = httpx.post(server.url + "/console/login", data={"api_key": server.secrets["auditor"]})
    assert login.status_code == 403  # the sign-in form has its own token too
    assert len(server.events("pend-nocsrf")) == before
    assert server.ledger.store.approval(WS, "ap-3").decision is None


def test_roles_see_only_their_pages_and_a_publisher_cannot_sign_in(browser, console_server):
    server = console_server
    sign_in(browser, server, "auditor", "/console/approvals")
    assert "403" in browser.title and "approver" in browser.find_element(By.ID, "error-message").text
    nav = browser.find_element(By.TAG_NAME, "nav").text
    assert "Approvals" not in nav and "Runs" in nav and "Ledger" in nav
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, lambda d: "/console/login" in d.current_url)
    browser.get(server.url + "/console/runs")
    assert "/console/login" in browser.current_url  # the session ended
    browser.find_element(By.ID, "api-key").send_keys(server.secrets["publisher"])
    browser.find_element(By.ID, "sign-in").click()
    text_of(browser, "login-error", "cannot sign in to the console")
    browser.find_element(By.ID, "api-key").send_keys("tacho_000000000000_" + "A" * 43)
    browser.find_element(By.ID, "sign-in").click()
    text_of(browser, "login-error", "unknown API key")


def test_an_engineer_reverts_a_reversible_change_through_its_hook_and_irreversible_ones_are_labelled(
        browser, console_server):
    server = console_server
    sign_in(browser, server, "engineer", "/console/changes")
    sent = browser.find_element(By.ID, "change-ch-send-1")
    assert "irreversible — cannot be undone" in sent.text and not sent.find_elements(By.CSS_SELECTOR, "button.revert")
    shot(browser, "changes")

    failing = browser.find_element(By.ID, "change-ch-void-2")
    failing.find_element(By.CLASS_NAME, "reason").send_keys("wrong invoice")
    failing.find_element(By.CSS_SELECTOR, "button.revert").click()
    assert "revert hook" in text_of(browser, "error-message", "already paid")
    assert [e["type"] for e in server.events("open-void-fails")][-1] == "change.applied"

    browser.get(server.url + "/console/changes")
    card = browser.find_element(By.ID, "change-ch-void-1")
    card.find_element(By.CLASS_NAME, "reason").send_keys("voided the wrong invoice")
    card.find_element(By.CSS_SELECTOR, "button.revert").click()
    flash = text_of(browser, "flash", "ch-void-1 of open-void reverted")
    assert "compensating run open-void.revert-ch-void-1" in flash
    # one writer per run: the open run is the agent's, the revert is a compensating run of its own
    assert [e["type"] for e in server.events("open-void")][-1] == "change.applied"
    comp = server.events("open-void.revert-ch-void-1")
    assert [e["type"] for e in comp] == ["run.started", "change.proposed", "change.applied", "run.completed"]
    assert comp[0]["data"]["labels"] == {"reverts_run": "open-void", "reverts_change": "ch-void-1"}
    assert comp[0]["data"]["input"]["reason"] == "voided the wrong invoice"
    assert comp[3]["data"]["result"]["by"] == server.identity("engineer")
    assert ("ch-void-1", server.identity("engineer"), "voided the wrong invoice") in server.reverted
    assert not any(r[0] == "ch-void-2" for r in server.reverted)
    assert "reverted by " + server.identity("engineer") in browser.find_element(By.ID, "change-ch-void-1").text
    actions = {a["action"] for a in server.console_actions() if a["key_id"] == server.key_ids["engineer"]}
    assert {"console.change.revert", "console.change.revert_failed"} <= actions


def test_an_approver_reverts_a_completed_runs_change_as_a_compensating_run_shown_on_the_changes_page(
        browser, console_server):
    server = console_server
    sign_in(browser, server, "approver", "/console/changes")
    card = browser.find_element(By.ID, "change-ch-void-done")
    assert "compensating run" in card.text  # the page says how the revert will be recorded
    original = server.events("done-void")
    card.find_element(By.CLASS_NAME, "reason").send_keys("customer disputed the void")
    card.find_element(By.CSS_SELECTOR, "button.revert").click()
    flash = text_of(browser, "flash", "ch-void-done of done-void reverted")
    assert "compensating run done-void.revert-ch-void-done" in flash
    assert ("ch-void-done", server.identity("approver"), "customer disputed the void") in server.reverted

    assert server.events("done-void") == original  # the completed run is untouched
    comp = server.events("done-void.revert-ch-void-done")
    assert [e["type"] for e in comp] == ["run.started", "change.proposed", "change.applied", "run.completed"]
    assert comp[0]["data"]["labels"] == {"reverts_run": "done-void", "reverts_change": "ch-void-done"}
    assert comp[1]["data"]["before"] == original[1]["data"]["after"]
    assert comp[1]["data"]["after"] == original[1]["data"]["before"]
    assert comp[3]["data"]["result"]["by"] == server.identity("approver")
    server.ledger.checkpoint(force=True)
    store = server.ledger.store
    result = verify_log(store.raw_entries(), [c.note for c in store.checkpoints()], [server.ledger.signer.vkey])
    assert result.ok, result.reason

    card = browser.find_element(By.ID, "change-ch-void-done")
    assert "reverted by " + server.identity("approver") in card.text
    assert not card.find_elements(By.CSS_SELECTOR, "button.revert")  # no second revert offered
    link = card.find_element(By.CSS_SELECTOR, "a.revert-run")
    assert link.text == "done-void.revert-ch-void-done"
    undo = browser.find_element(By.ID, "change-ch-void-done.revert")
    assert "compensating change" in undo.text and "irreversible" not in undo.text
    shot(browser, "changes-compensated")
    link.click()
    wait_for(browser, lambda d: d.find_element(By.ID, "run-title").text == "done-void.revert-ch-void-done")

    with _session_client(browser, server) as client:  # a second revert (a stale tab) is refused
        csrf = re.search(r'X-CSRF-Token": "([^"]+)"', client.get("/console/changes").text).group(1)
        again = client.post("/console/changes/revert", data={"csrf": csrf, "reason": "x", "run_id": "done-void",
                                                           "change_id": "ch-void-done"})
    assert again.status_code == 409 and "already reverted" in again.text
    assert len(server.events("done-void.revert-ch-void-done")) == 4


def test_an_analyst_sees_cost_and_quality_charts(browser, console_server):
    server = console_server
    sign_in(browser, server, "analyst", "/console/analytics")
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 6
    titles = [c.get_attribute("aria-label") for c in charts]
    assert any("by week" in t for t in titles) and any("agent version" in t for t in titles)
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline, svg.chart circle")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")) >= 5
    assert not browser.find_elements(By.ID, "analytics-missing")
    shot(browser, "analytics")


def test_an_engineer_opens_a_replay_diff_with_changed_outcomes_first(browser, console_server):
    server = console_server
    sign_in(browser, server, "engineer", "/console/replays")
    link = browser.find_element(By.CSS_SELECTOR, "a.replay-link")
    assert link.text == "whatif-large"
    link.click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "replay-runs"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#replay-runs tbody tr")
    flags = [("changed" in (r.get_attribute("class") or "")) for r in rows]
    assert flags == sorted(flags, reverse=True)  # every changed run is listed before the unchanged
    assert "cost" in browser.find_element(By.ID, "replay-deltas").text
    shot(browser, "replay")


def test_an_engineer_opens_a_step_replay_with_changed_answers_first(browser, console_server):
    sign_in(browser, console_server, "engineer", "/console/replays/steps-large")
    wait_for(browser, lambda d: d.find_elements(By.ID, "replay-calls"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#replay-calls tbody tr")
    flags = [("changed" in (r.get_attribute("class") or "")) for r in rows]
    assert rows and any(flags) and flags == sorted(flags, reverse=True)
    assert "response change rate" in browser.find_element(By.ID, "replay-deltas").text
    shot(browser, "replay-steps")


def test_an_admin_halts_a_workflow_and_an_agents_runtime_sees_it_until_cleared(browser, console_server):
    server = console_server
    halts = LedgerHalts(server.ledger.store)  # an embedded agent's view: the ledger's records

    def halted() -> list[tuple[str, str]]:
        return [(h.scope, h.target) for h in halts.current(WS).halts]

    assert ("workflow", HOOKED_WORKFLOW) not in halted()
    sign_in(browser, server, "admin", "/console/kill-switches")
    row = browser.find_element(By.ID, f"switch-{HOOKED_WORKFLOW}")
    row.find_element(By.CLASS_NAME, "reason").send_keys("refunds misfiring, investigating")
    row.find_element(By.CSS_SELECTOR, "button.reject").click()
    text_of(browser, "flash", f"workflow {HOOKED_WORKFLOW} halted")
    state = halts.current(WS).get("workflow", HOOKED_WORKFLOW)
    assert state is not None and state.by == server.identity("admin")
    assert state.reason == "refunds misfiring, investigating" and "halted by its kill switch" in state.refusal()
    assert halts.current("other-ws").halts == ()
    record = loads(next(r for r in server.ledger.store.records(WS, limit=10**6) if r.index == state.index).data)
    assert record["record"]["type"] == "halt.set" and record["record"]["data"] == {
        "scope": "workflow", "target": HOOKED_WORKFLOW, "reason": "refunds misfiring, investigating",
        "via": "console"}
    assert browser.find_element(By.ID, f"halt-workflow-{HOOKED_WORKFLOW}")  # listed in force
    shot(browser, "kill-switches")

    # an agent service's runtime (embedded: reading the same ledger) refuses a new run
    started: list[bool] = []

    def billing_agent(ctx, input):
        started.append(True)
        return {"checked": True}

    def billing(workflow: str) -> AgentSpec:
        return AgentSpec(ref="tests.e2e.test_console_pages:billing_agent", fn=billing_agent, tools=ToolRegistry(),
                         prompts={}, workflow=workflow, identity={"id": "billing-agent", "version": "3.1.0"})

    with embedded_runtime(server.ledger, WS) as rt:
        stopped = rt.run(billing(HOOKED_WORKFLOW), run_id="halted-run-1")
        assert not started and stopped.halted and stopped.result["kill_switch"]["by"] == server.identity("admin")
        refused = server.events("halted-run-1")
        assert [e["type"] for e in refused] == ["run.started", "run.completed"]
        assert refused[1]["data"]["outcome"] == "cancelled"
        assert server.identity("admin") in refused[1]["data"]["error"]
        assert "refunds misfiring, investigating" in refused[1]["data"]["error"] and state.at in refused[1]["data"]["error"]
        assert refused[1]["data"]["result"]["kill_switch"]["ledger_index"] == state.index
        rt.run(billing("ticket-triage"), run_id="not-halted-1")  # other workflows still run
    assert server.events("not-halted-1")[-1]["data"] == {"outcome": "succeeded", "result": {"checked": True}}
    row = browser.find_element(By.ID, f"switch-{HOOKED_WORKFLOW}")
    row.find_element(By.CLASS_NAME, "reason").send_keys("fixed")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    text_of(browser, "flash", f"workflow {HOOKED_WORKFLOW} cleared")
    assert ("workflow", HOOKED_WORKFLOW) not in halted()
    with embedded_runtime(server.ledger, WS) as rt:
        rt.run(billing(HOOKED_WORKFLOW), run_id="resumed-run-1")
    assert server.events("resumed-run-1")[-1]["data"] == {"outcome": "succeeded", "result": {"checked": True}}
    history = browser.find_element(By.ID, "switch-history").text
    assert "halt" in history and "clear" in history and "console" in history


def test_an_approver_halts_any_scope_from_the_form_and_an_engineer_may_only_look(browser, console_server):
    server = console_server
    halts = LedgerHalts(server.ledger.store)
    sign_in(browser, server, "approver", "/console/kill-switches")
    Select(browser.find_element(By.ID, "halt-scope")).select_by_value("agent")
    browser.find_element(By.ID, "halt-target").send_keys("billing/../agent")
    browser.find_element(By.ID, "halt-reason").send_keys("loops on refunds")
    browser.find_element(By.ID, "halt-submit").click()
    text_of(browser, "flash", "agent billing/../agent halted")
    assert ("agent", "billing/../agent") in [(h.scope, h.target) for h in halts.current(WS).halts]
    Select(browser.find_element(By.ID, "halt-scope")).select_by_value("run")
    browser.find_element(By.ID, "halt-target").send_keys("not a run id")
    browser.find_element(By.ID, "halt-reason").send_keys("x")
    browser.find_element(By.ID, "halt-submit").click()
    text_of(browser, "flash", "is not a run id")
    row = browser.find_element(By.ID, "halt-agent-billing/../agent")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    text_of(browser, "flash", "agent billing/../agent cleared")
    assert all(h.scope != "agent" for h in halts.current(WS).halts)
    browser.delete_all_cookies()
    sign_in(browser, server, "engineer", "/console/kill-switches")
    assert not browser.find_elements(By.ID, "halt-form")
    assert "needs the approver or admin role" in browser.find_element(By.TAG_NAME, "main").text
