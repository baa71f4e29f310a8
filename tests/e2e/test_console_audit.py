"""The console's Audit log page in Chromium: platform records, including the Approvals and Changes reads."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from tests.e2e.console_support import sign_in, wait_for


def test_an_auditor_reads_the_audit_log_with_the_approvers_page_reads_and_actions(browser, console_server):
    server = console_server
    sign_in(browser, server, "approver", "/console/approvals")
    browser.get(server.url + "/console/changes")
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, lambda d: "/console/login" in d.current_url)

    sign_in(browser, server, "auditor", "/console/audit")
    assert "Audit log" in browser.find_element(By.TAG_NAME, "nav").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#audit-log tr.audit-record")
    text = browser.find_element(By.ID, "audit-log").text
    for action in ("console.sign_in", "console.approvals.list", "console.changes.list", "console.sign_out"):
        assert action in text, action
    assert server.identity("approver").split(" (")[0] in text
    indexes = [int(r.get_attribute("data-index")) for r in rows]
    assert indexes == sorted(indexes)
    stored = [r.index for r in server.ledger.store.records("acme", limit=10**6)]
    assert indexes == stored[: len(indexes)]
    browser.get(server.url + "/console/audit?type=console.action")
    typed = browser.find_element(By.ID, "audit-log").text
    assert "console.sign_in" in typed and "console.approvals.list" not in typed
    reads = [a["action"] for a in server.console_actions() if a["key_id"] == server.key_ids["auditor"]]
    assert "console.audit_log.list" in reads  # reading the audit log is itself recorded


def test_roles_without_the_audit_log_do_not_see_it(browser, console_server):
    server = console_server
    sign_in(browser, server, "engineer", "/console/audit")
    assert "403" in browser.title
    assert "Audit log" not in browser.find_element(By.TAG_NAME, "nav").text
