"""Console sign-in against login CSRF: the form token is bound to a nonce by a server secret."""

from __future__ import annotations

import re

from api.console.session import COOKIE, LOGIN_COOKIE
from tests.integration.api_support import Api, api

__all__ = ["api"]


def _form_token(a: Api) -> str:
    page = a.client.get("/console/login")
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def _post(a: Api, csrf: str, headers: dict[str, str] | None = None):
    return a.client.post("/console/login", data={"api_key": a.secrets["auditor"], "csrf": csrf},
                         headers=headers or {}, follow_redirects=False)


def _only_cookie(a: Api, value: str) -> None:
    """Make ``value`` the one login nonce cookie the client sends (whatever domain the jar gave
    the server's cookie: newer httpx keys it by ``testserver.local``, so a plain set adds one)."""
    a.client.cookies.clear()
    a.client.cookies.set(LOGIN_COOKIE, value, path="/console")


def test_a_planted_cookie_with_the_same_value_in_the_form_does_not_sign_anyone_in(api: Api) -> None:
    api.client.cookies.set(LOGIN_COOKIE, "planted-by-an-attacker", path="/console")
    r = _post(api, "planted-by-an-attacker")
    assert r.status_code == 403 and "CSRF" in r.text
    assert COOKIE not in r.cookies


def test_the_form_token_signs_in_only_with_its_own_nonce_cookie(api: Api) -> None:
    token = _form_token(api)
    nonce = api.client.cookies.get(LOGIN_COOKIE)
    assert token != nonce  # the cookie alone does not tell the form token
    _only_cookie(api, "another-nonce")  # replaced, not added beside the real one
    assert _post(api, token).status_code == 403
    _only_cookie(api, nonce)
    ok = _post(api, token)
    assert ok.status_code == 303 and ok.cookies.get(COOKIE)


def test_a_sign_in_posted_from_another_origin_or_referring_site_is_refused(api: Api) -> None:
    token = _form_token(api)
    assert _post(api, token, {"Origin": "http://evil.example"}).status_code == 403
    assert _post(api, token, {"Referer": "http://evil.example/login.html"}).status_code == 403
    assert _post(api, token, {"Origin": "http://testserver"}).status_code == 303
