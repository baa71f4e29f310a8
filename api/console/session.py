"""Console sign-in: sessions bound to an API key, an HttpOnly SameSite cookie and CSRF tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from api.approvals import identity
from api.keys_store import ApiKey, AuthError, KeyStore
from domain.errors import TachographError

COOKIE = "tacho_console"
LOGIN_COOKIE = "tacho_login_csrf"
CONSOLE_ROLES = ("auditor", "analyst", "engineer", "admin", "approver")
SESSION_TTL_S = 8 * 3600


class SignInRequired(TachographError):
    """No live console session: the person must sign in (redirect to the sign-in page)."""


class CsrfError(TachographError):
    """A form or action came without the session's CSRF token, or from another origin (HTTP 403)."""


@dataclass
class Session:
    """One signed-in person: the key they signed in with and the session's CSRF token."""

    key_id: str
    workspace: str
    role: str
    name: str
    csrf: str
    expires: float

    @property
    def identity(self) -> str:
        """Who acted, as written into the ledger (``by``): the key's name and id."""
        return identity(self.name, self.key_id)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Sessions:
    """Live sessions in memory, by the SHA-256 of their cookie (a restart signs everyone out)."""

    def __init__(self, keys: KeyStore, clock: Callable[[], float], ttl_s: float = SESSION_TTL_S) -> None:
        self.keys = keys
        self.clock = clock
        self.ttl_s = ttl_s
        self._live: dict[bytes, Session] = {}
        self._lock = threading.Lock()

    def sign_in(self, secret: str) -> tuple[str, Session]:
        """Check an API key and open a session; return the cookie value and the session."""
        key = self.keys.authenticate(secret)
        if key.role not in CONSOLE_ROLES:
            raise AuthError(f"role {key.role!r} cannot sign in to the console; "
                            f"one of: {', '.join(CONSOLE_ROLES)}")
        token = secrets.token_urlsafe(32)
        session = Session(key.id, key.workspace, key.role, key.label, secrets.token_urlsafe(32),
                          self.clock() + self.ttl_s)
        with self._lock:
            self._live[_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> Session:
        """The live session of a cookie (its key must still be live); raises SignInRequired."""
        if not token:
            raise SignInRequired("sign in with an API key")
        with self._lock:
            session = self._live.get(_digest(token))
        if session is None:
            raise SignInRequired("your session has ended; sign in again")
        if session.expires <= self.clock():
            self.end(token)
            raise SignInRequired("your session expired; sign in again")
        if not self._key_live(self.keys.get(session.key_id)):
            self.end(token)
            raise SignInRequired("the API key of this session was revoked or expired")
        return session

    def _key_live(self, key: ApiKey) -> bool:
        if key.revoked:
            return False
        if key.expires:
            when = datetime.fromisoformat(key.expires.replace("Z", "+00:00")).timestamp()
            return when > self.clock()
        return True

    def end(self, token: str | None) -> None:
        """Sign out (forget the session)."""
        if token:
            with self._lock:
                self._live.pop(_digest(token), None)
