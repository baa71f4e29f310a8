"""Webhook endpoints over the HTTP API: who may do what, validation, bounds, workspaces, secrets."""

from __future__ import annotations

import sqlite3
import stat

from api.keys_store import ROLES
from tests.integration.api_support import Api, api

__all__ = ["api"]

HOOK = "https://hooks.example.com/tacho"


def _create(a: Api, role: str = "admin", **body: object) -> tuple[int, dict]:
    r = a.client.post("/v1/webhooks", json={"url": HOOK, **body}, headers=a.auth(role))
    return r.status_code, r.json()


def test_each_role_may_do_what_the_docs_say_with_webhooks(api: Api) -> None:
    status, made = _create(api)
    assert status == 201, made
    wid = made["webhook"]["id"]
    for role in ROLES:
        h = api.auth(role)
        reader = role in ("admin", "auditor")
        assert api.client.get("/v1/webhooks", headers=h).status_code == (200 if reader else 403), role
        assert api.client.get(f"/v1/webhooks/{wid}/deliveries", headers=h).status_code == (
            200 if reader else 403), role
        if role != "admin":
            assert _create(api, role)[0] == 403, role
            assert api.client.delete(f"/v1/webhooks/{wid}", headers=h).status_code == 403, role
    assert api.client.delete(f"/v1/webhooks/{wid}", headers=api.auth("admin")).status_code == 200
    assert api.client.get(f"/v1/webhooks/{wid}", headers=api.auth("admin")).status_code == 404


def test_the_secret_is_shown_once_and_kept_only_in_a_private_file(api: Api) -> None:
    status, made = _create(api, kinds=["run.failed", "approval.requested"], description="on-call")
    assert status == 201
    secret, hook = made["secret"], made["webhook"]
    assert secret.startswith("whsec_") and len(secret) >= 40
    assert hook["kinds"] == ["approval.requested", "run.failed"] and hook["url"] == HOOK
    assert hook["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0}
    for path in ("/v1/webhooks", f"/v1/webhooks/{hook['id']}", f"/v1/webhooks/{hook['id']}/deliveries"):
        for role in ("admin", "auditor"):
            assert secret not in api.client.get(path, headers=api.auth(role)).text
    path = api.data_dir / "keys" / "webhooks.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT secret FROM endpoints").fetchone()[0] == secret  # the server signs with it
    listed = api.client.get("/v1/webhooks", headers=api.auth("auditor")).json()
    assert listed[0]["url"] == "https://hooks.example.com/…"  # the path may hold a token


def test_bad_endpoints_are_refused_naming_the_problem(api: Api) -> None:
    cases = {
        "ftp://hooks.example.com/x": "scheme must be http or https",
        "https://u:p@hooks.example.com/": "credentials",
        "http://127.0.0.1:9/hook": "TACHO_WEBHOOK_ALLOW_PRIVATE",
        "not a url": "whitespace",
    }
    for url, problem in cases.items():
        r = api.client.post("/v1/webhooks", json={"url": url}, headers=api.auth("admin"))
        assert r.status_code == 422 and problem in r.json()["message"], (url, r.text)
    too_long = api.client.post("/v1/webhooks", json={"url": HOOK + "x" * 2048}, headers=api.auth("admin"))
    assert too_long.status_code == 422 and "2048" in too_long.text
    for kinds in (["run.completed"], []):
        r = api.client.post("/v1/webhooks", json={"url": HOOK, "kinds": kinds}, headers=api.auth("admin"))
        assert r.status_code == 422, (kinds, r.text)
    assert api.client.get("/v1/webhooks/nope", headers=api.auth("admin")).status_code == 422
    assert api.client.get("/v1/webhooks", headers=api.auth("admin")).json() == []


def test_endpoints_are_bounded_per_workspace_and_invisible_to_others(api: Api) -> None:
    for _ in range(10):
        assert _create(api)[0] == 201
    status, body = _create(api)
    assert status == 422 and "has 10 webhook endpoints" in body["message"]
    beta = {"Authorization": f"Bearer {api.key('beta', 'admin')}"}
    r = api.client.post("/v1/webhooks", json={"url": HOOK}, headers=beta)
    assert r.status_code == 201
    theirs = r.json()["webhook"]["id"]
    acme = api.auth("admin")
    assert theirs not in {w["id"] for w in api.client.get("/v1/webhooks", headers=acme).json()}
    for method, path in (("GET", f"/v1/webhooks/{theirs}"), ("DELETE", f"/v1/webhooks/{theirs}"),
                         ("GET", f"/v1/webhooks/{theirs}/deliveries")):
        assert api.client.request(method, path, headers=acme).status_code == 404, path
    assert api.client.get(f"/v1/webhooks/{theirs}", headers=beta).status_code == 200
