"""API keys kept hashed in a small SQLite file (mode 0600) in the data directory."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domain.errors import ConfigError, NotFoundError, TachographError

ROLES: tuple[str, ...] = ("publisher", "auditor", "analyst", "engineer", "admin", "approver")
KEY_PREFIX = "tacho"
_KEY_RE = re.compile(r"^tacho_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_WORKSPACE_RE = re.compile(r"^[a-z0-9-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY, workspace TEXT NOT NULL, role TEXT NOT NULL, secret_sha256 BLOB NOT NULL,
  created TEXT NOT NULL, expires TEXT, revoked TEXT, label TEXT NOT NULL DEFAULT '');
"""


class AuthError(TachographError):
    """An API key is missing, malformed, unknown, revoked or expired (HTTP 401)."""


class KeyRequestError(TachographError):
    """A key management request is invalid: unknown role, bad workspace, past expiry (HTTP 422)."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_expiry(text: str, now: float) -> float:
    """Expiry as unix time from ``30d`` / ``12h`` / ``90m`` or an RFC 3339 date-time."""
    m = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        return now + n * {"d": 86400, "h": 3600, "m": 60}[unit]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise KeyRequestError(
            f"expiry {text!r} is neither a duration like 30d/12h/90m nor an RFC 3339 time"
        ) from e
    if when.tzinfo is None:
        raise KeyRequestError(f"expiry {text!r} needs a time zone offset, e.g. 2027-01-01T00:00:00Z")
    return when.timestamp()


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never its secret)."""

    id: str
    workspace: str
    role: str
    created: str
    expires: str | None
    revoked: str | None
    label: str

    def to_json(self) -> dict[str, Any]:
        """The key's public fields as JSON."""
        return asdict(self)


def _sha(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class KeyStore:
    """Create, check, list and revoke API keys (SHA-256 of a 256-bit secret, compared in constant time)."""

    def __init__(self, path: Path | str, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
            mode = self.path.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigError(f"API key file {self.path} is readable by others (mode {mode:o}); chmod 600 it")
        try:
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the API key file {self.path}: {e}") from e

    def create(
        self, workspace: str, role: str, expires: float | None = None, label: str = ""
    ) -> tuple[ApiKey, str]:
        """Store a new key; return it with its full secret text (shown once, never stored)."""
        if role not in ROLES:
            raise KeyRequestError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if not _WORKSPACE_RE.match(workspace):
            raise KeyRequestError(f"workspace {workspace!r} must be 1-64 chars of a-z, 0-9, '-'")
        now = self.clock()
        if expires is not None and expires <= now:
            raise KeyRequestError("expiry is in the past")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = ApiKey(key_id, workspace, role, _iso(now), _iso(expires) if expires else None, None, label)
        with self._lock:
            self._conn.execute(
                "INSERT INTO api_keys (id, workspace, role, secret_sha256, created, expires, label) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, workspace, role, _sha(secret), row.created, row.expires, label),
            )
        return row, f"{KEY_PREFIX}_{key_id}_{secret}"

    def authenticate(self, text: str) -> ApiKey:
        """The live key a presented secret belongs to; raises ``AuthError`` saying why not."""
        m = _KEY_RE.match(text.strip())
        if not m:
            raise AuthError("malformed API key (expected tacho_<id>_<secret>)")
        key_id, secret = m.group(1), m.group(2)
        with self._lock:
            row = self._conn.execute(
                "SELECT id, workspace, role, created, expires, revoked, label, secret_sha256 "
                "FROM api_keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        digest = _sha(secret)
        stored = bytes(row[7]) if row else hashlib.sha256(b"absent").digest()
        if not hmac.compare_digest(digest, stored) or row is None:
            raise AuthError("unknown API key")
        key = ApiKey(*row[:7])
        if key.revoked:
            raise AuthError(f"API key {key.id} was revoked at {key.revoked}")
        if key.expires and datetime.fromisoformat(key.expires.replace("Z", "+00:00")).timestamp() <= self.clock():
            raise AuthError(f"API key {key.id} expired at {key.expires}")
        return key

    def revoke(self, key_id: str, workspace: str | None = None) -> ApiKey:
        """Revoke a key (only within ``workspace`` when given); revoking twice keeps the first time."""
        with self._lock:
            row = self._conn.execute(
                "SELECT workspace FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None or (workspace is not None and row[0] != workspace):
                raise NotFoundError(f"no API key {key_id!r}")
            self._conn.execute(
                "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                (_iso(self.clock()), key_id),
            )
        return self.get(key_id)

    def get(self, key_id: str) -> ApiKey:
        """One key by id."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, workspace, role, created, expires, revoked, label FROM api_keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no API key {key_id!r}")
        return ApiKey(*row)

    def list(self, workspace: str | None = None) -> list[ApiKey]:
        """Keys (of one workspace when given), oldest first."""
        sql = "SELECT id, workspace, role, created, expires, revoked, label FROM api_keys"
        args: tuple[str, ...] = ()
        if workspace is not None:
            sql += " WHERE workspace = ?"
            args = (workspace,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created, id", args).fetchall()
        return [ApiKey(*r) for r in rows]

    def close(self) -> None:
        """Close the file."""
        self._conn.close()
