"""Policy revisions over the API: publish, activate, read, diff, roles, and OPA's bundle endpoint
(ETag, 304, long polling). Revisions are platform records: they verify with the ledger."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from api.policies import OpaChecker
from domain.verify import verify_log
from tachograph.contract.canonical import loads
from tests.harness import free_port
from tests.integration.api_support import Api, api, serving

__all__ = ["api"]  # the fixture

POLICIES = Path(__file__).resolve().parents[1] / "policies"
REFUNDS = (POLICIES / "refunds.rego").read_text()
STRICTER = REFUNDS.replace("deny_above := 1000", "deny_above := 500")


def publish(api: Api, files: dict[str, str], **kw: object) -> dict:
    r = api.client.post("/v1/policy/revisions", json={"files": files, **kw}, headers=api.auth("admin"))
    assert r.status_code in (200, 201), r.text
    return r.json()


def manifest_of(raw: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tar:
        return json.loads(tar.extractfile("/.manifest").read())  # type: ignore[union-attr]


def test_publish_activate_and_read_back_every_revision_as_ledger_records(api: Api) -> None:
    assert api.client.get("/v1/policy", headers=api.auth("publisher")).json() == {
        "workspace": "acme", "active": None, "fail_closed": ["write"]}
    assert api.client.get("/v1/policy/bundle.tar.gz", headers=api.auth("publisher")).status_code == 404

    first = publish(api, {"refunds.rego": REFUNDS}, message="refund limits")
    assert first["revision"].startswith("1-") and first["active"] is False
    assert first["digest"].startswith("sha256:") and first["activation"] is None
    second = publish(api, {"refunds.rego": STRICTER}, activate=True, reason="tighter limit",
                     fail_closed=["read", "write"])
    assert second["revision"].startswith("2-") and second["active"] is True
    assert second["activation"]["previous"] is None and second["activation"]["reason"] == "tighter limit"
    # the same files and settings again: nothing new
    r = api.client.post("/v1/policy/revisions", json={"files": {"refunds.rego": STRICTER},
                                                      "fail_closed": ["write", "read"]},
                        headers=api.auth("admin"))
    assert r.status_code == 200 and r.json()["revision"] == second["revision"]

    state = api.client.get("/v1/policy", headers=api.auth("publisher")).json()
    assert state["active"]["revision"] == second["revision"] and state["fail_closed"] == ["read", "write"]

    # roll back to the first
    r = api.client.put("/v1/policy/active", json={"revision": first["revision"], "reason": "rollback"},
                       headers=api.auth("admin"))
    assert r.status_code == 200 and r.json()["changed"] is True
    assert r.json()["active"]["previous"] == second["revision"]
    r = api.client.put("/v1/policy/active", json={"revision": first["revision"]}, headers=api.auth("admin"))
    assert r.json()["changed"] is False

    listed = api.client.get("/v1/policy/revisions", headers=api.auth("auditor")).json()
    assert listed["active"] == first["revision"]
    assert [(x["revision"], x["active"], x["ever_active"]) for x in listed["revisions"]] == [
        (second["revision"], False, True), (first["revision"], True, True)]
    assert [a["revision"] for a in listed["activations"]] == [first["revision"], second["revision"]]
    assert listed["revisions"][0]["published_by"].startswith("apikey:")  # the admin key (unnamed)

    shown = api.client.get(f"/v1/policy/revisions/{second['revision']}", headers=api.auth("engineer")).json()
    assert shown["sources"] == {"refunds.rego": STRICTER}

    d = api.client.get("/v1/policy/diff", params={"from": first["revision"], "to": second["revision"]},
                       headers=api.auth("auditor")).json()
    (f,) = d["files"]
    assert f["status"] == "changed" and "-deny_above := 1000" in f["diff"] and "+deny_above := 500" in f["diff"]

    # every change is a platform record, and the ledger verifies
    types = [loads(row[1])["record"]["type"] for row in api.ledger.store.raw_entries()
             if loads(row[1])["kind"] == "record"]
    assert types.count("policy.published") == 2 and types.count("policy.activated") == 2
    store = api.ledger.store
    api.ledger.checkpoint(force=True)
    result = verify_log(store.raw_entries(), [c.note for c in store.checkpoints()],
                        [api.ledger.signer.vkey], origin=store.get_meta("origin"))
    assert result.ok, result.reason


def test_roles_and_bad_requests(api: Api) -> None:
    body = {"files": {"refunds.rego": REFUNDS}}
    for role in ("publisher", "engineer", "auditor", "analyst"):
        assert api.client.post("/v1/policy/revisions", json=body, headers=api.auth(role)).status_code == 403
    for role in ("analyst",):
        assert api.client.get("/v1/policy/revisions", headers=api.auth(role)).status_code == 403
        assert api.client.get("/v1/policy/bundle.tar.gz", headers=api.auth(role)).status_code == 403
    assert api.client.get("/v1/policy/revisions").status_code == 401
    bad = [({"files": {"../x.rego": REFUNDS}}, "relative path"),
           ({"files": {"notes.md": "hi"}}, ".rego files and data.json"),
           ({"files": {"p.rego": REFUNDS}, "fail_closed": ["delete"]}, "fail_closed"),
           ({"files": {"p.rego": REFUNDS}, "surprise": 1}, "surprise")]
    for payload, words in bad:
        r = api.client.post("/v1/policy/revisions", json=payload, headers=api.auth("admin"))
        assert r.status_code == 422 and words in r.text, (payload, r.text)
    r = api.client.put("/v1/policy/active", json={"revision": "9-abcdefabcdef"}, headers=api.auth("admin"))
    assert r.status_code == 404 and "no policy revision" in r.text
    assert api.client.get("/v1/policy/revisions/..%2Fx", headers=api.auth("admin")).status_code in (404, 422)
    # another workspace sees none of acme's revisions
    publish(api, {"refunds.rego": REFUNDS}, activate=True)
    other = api.key("globex", "admin")
    listed = api.client.get("/v1/policy/revisions", headers={"Authorization": f"Bearer {other}"}).json()
    assert listed["revisions"] == [] and listed["active"] is None


def test_the_bundle_endpoint_speaks_opas_bundle_protocol(api: Api) -> None:
    rev = publish(api, {"refunds.rego": REFUNDS, "data.json": '{"limits": {"refund": 100}}'},
                  activate=True)["revision"]
    r = api.client.get("/v1/policy/bundle.tar.gz", headers=api.auth("publisher"))
    assert r.status_code == 200 and r.headers["etag"] == f'"{rev}"'
    assert r.headers["content-type"] == "application/vnd.openpolicyagent.bundles"
    assert manifest_of(r.content)["revision"] == rev
    etag = r.headers["etag"]
    r = api.client.get("/v1/policy/bundle.tar.gz", headers={**api.auth("publisher"), "If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""

    # a long poll returns as soon as another revision is activated
    got: dict[str, object] = {}

    def poll() -> None:
        t0 = time.monotonic()
        resp = api.client.get("/v1/policy/bundle.tar.gz",
                              headers={**api.auth("publisher"), "If-None-Match": etag,
                                       "Prefer": "modes=snapshot,delta;wait=20"})
        got.update(status=resp.status_code, seconds=time.monotonic() - t0, body=resp.content)

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(1.0)
    assert t.is_alive(), "the long poll waits while the revision is unchanged"
    new = publish(api, {"refunds.rego": STRICTER}, activate=True)["revision"]
    t.join(10)
    assert got["status"] == 200 and float(got["seconds"]) < 5  # type: ignore[arg-type]
    assert manifest_of(got["body"])["revision"] == new  # type: ignore[arg-type]
    # and a long poll that sees no change ends with 304 after its wait
    t0 = time.monotonic()
    r = api.client.get("/v1/policy/bundle.tar.gz", headers={**api.auth("publisher"), "If-None-Match": f'"{new}"',
                                                            "Prefer": "wait=1"})
    assert r.status_code == 304 and 0.9 <= time.monotonic() - t0 < 5


def test_a_long_poll_whose_client_went_away_does_not_hold_the_servers_shutdown(api: Api) -> None:
    """OPA stopped while its long poll waited: the server notices and can stop at once, instead
    of holding its graceful shutdown until the poll's wait ends."""
    rev = publish(api, {"refunds.rego": REFUNDS}, activate=True)["revision"]
    with serving(api.app, free_port()) as url:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.get(f"{url}/v1/policy/bundle.tar.gz", timeout=1, headers={
                **api.auth("publisher"), "If-None-Match": f'"{rev}"', "Prefer": "wait=60"})
        time.sleep(0.5)
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    assert took < 3, f"the server took {took:.1f}s to stop: the abandoned long poll held it"


@pytest.mark.opa
def test_a_policy_opa_would_refuse_is_not_published(api: Api, opa_bin: Path) -> None:
    api.services.policies.checker = OpaChecker(str(opa_bin))
    r = api.client.post("/v1/policy/revisions", json={"files": {"p.rego": "package tachograph\n\nallow if {"}},
                        headers=api.auth("admin"))
    assert r.status_code == 422 and "OPA refuses this policy (opa 1.22.4)" in r.text, r.text
    assert "p.rego" in r.text
    assert api.client.get("/v1/policy/revisions", headers=api.auth("admin")).json()["revisions"] == []
    ok = publish(api, {"refunds.rego": REFUNDS})
    assert ok["checked_with"] == "opa 1.22.4"


def test_one_workspace_cannot_hold_more_long_polls_than_its_share(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    import api.routes.policies as routes

    monkeypatch.setattr(routes, "MAX_LONG_POLLS_PER_WORKSPACE", 1)
    rev = publish(api, {"refunds.rego": REFUNDS}, activate=True)["revision"]
    held = {**api.auth("publisher"), "If-None-Match": f'"{rev}"', "Prefer": "wait=3"}
    first: dict[str, float] = {}

    def hold() -> None:
        t0 = time.monotonic()
        first["status"] = api.client.get("/v1/policy/bundle.tar.gz", headers=held).status_code
        first["seconds"] = time.monotonic() - t0

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    r = api.client.get("/v1/policy/bundle.tar.gz", headers=held)
    assert r.status_code == 304 and time.monotonic() - t0 < 1.0, "over the share: answered at once"
    t.join(10)
    assert first["status"] == 304 and first["seconds"] >= 2.5, "the first one held its wait"
    assert routes._long_polls == {}, "every long poll let go of its place"
