"""Ids that look like paths (``../victim-run/refund-999``) act only on their own run, in Chromium."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from api.console.compensation import revert_run_id
from domain.ports import Incoming, Source
from tachograph.contract.canonical import dumps
from tests.e2e.console_support import WS, applied_run, pending_run, sign_in, text_of

TRAVERSAL_APPROVAL = "../victim-run/refund-999"
TRAVERSAL_CHANGE = "../victim-apply/ch-victim"


def _append(server, events) -> None:
    report = server.ledger.append([Incoming(dumps(e), Source(kind="file", name="ids.jsonl")) for e in events])
    assert report.accepted == len(events), report.results


def test_approving_a_card_whose_approval_id_climbs_to_another_run_decides_only_its_own(
        browser, console_server):
    server = console_server
    _append(server, [*pending_run("victim-run", "refund-999", "ch-refund", "high", "2026-11-21T09:00"),
                     *pending_run("harmless-run", TRAVERSAL_APPROVAL, "ch-harmless", "low",
                                  "2026-11-21T09:05")])
    sign_in(browser, server, "approver", "/console/approvals")
    card = browser.find_element(By.ID, "approval-" + TRAVERSAL_APPROVAL)
    card.find_element(By.CLASS_NAME, "reason").send_keys("looks harmless")
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    text_of(browser, "flash", "of harmless-run approved")
    store = server.ledger.store
    assert store.approval(WS, "refund-999").decision is None
    assert (store.approval(WS, TRAVERSAL_APPROVAL).decision, store.approval(WS, TRAVERSAL_APPROVAL).run_id) == (
        "approved", "harmless-run")
    made = [r["data"] for r in server.records("approval.decision")]
    assert [(d["approval_id"], d["run_id"]) for d in made if d["approval_id"] in (TRAVERSAL_APPROVAL, "refund-999")
            ] == [(TRAVERSAL_APPROVAL, "harmless-run")]
    assert [e["type"] for e in server.events("victim-run")][-1] == "approval.requested"
    assert [e["type"] for e in server.events("harmless-run")][-1] == "approval.requested"  # runs untouched
    assert browser.find_elements(By.ID, "approval-refund-999")  # still pending on the page


def test_reverting_a_card_whose_change_id_climbs_to_another_run_reverts_only_its_own(
        browser, console_server):
    server = console_server
    _append(server, [*applied_run("victim-apply", "ch-victim", True, "2026-11-21T10:00"),
                     *applied_run("harmless-apply", TRAVERSAL_CHANGE, True, "2026-11-21T10:05")])
    sign_in(browser, server, "engineer", "/console/changes")
    card = browser.find_element(By.ID, "change-" + TRAVERSAL_CHANGE)
    card.find_element(By.CLASS_NAME, "reason").send_keys("undo")
    card.find_element(By.CSS_SELECTOR, "button.revert").click()
    text_of(browser, "flash", "of harmless-apply reverted")
    assert [e["type"] for e in server.events("victim-apply")][-1] == "change.applied"
    assert [e["type"] for e in server.events("harmless-apply")][-1] == "change.applied"  # the agent's run
    comp = server.events(revert_run_id("harmless-apply", TRAVERSAL_CHANGE))
    assert comp[0]["data"]["labels"] == {"reverts_run": "harmless-apply", "reverts_change": TRAVERSAL_CHANGE}
    assert server.ledger.store.run_entries(WS, revert_run_id("victim-apply", "ch-victim")) == []


def test_an_approval_posted_for_a_run_it_does_not_belong_to_is_refused(browser, console_server):
    server = console_server
    _append(server, pending_run("owner-run", "ap-owned", "ch-owned", "low", "2026-11-21T11:00"))
    sign_in(browser, server, "approver", "/console/approvals")
    card = browser.find_element(By.ID, "approval-ap-owned")
    browser.execute_script("arguments[0].querySelector('input[name=run_id]').value = 'pend-approve'", card)
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    text_of(browser, "error-message", "no approval 'ap-owned' in run 'pend-approve'")
    assert [e["type"] for e in server.events("owner-run")][-1] == "approval.requested"
    assert server.ledger.store.approval(WS, "ap-owned").decision is None
