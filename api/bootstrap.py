"""Composition root: build stores, keys and the ledger from settings (nothing at import)."""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from api.settings import Settings
from domain.errors import ConfigError
from domain.ledger import Ledger, LedgerConfig
from domain.note import NoteSigner
from domain.ports import LedgerStore
from domain.stores.sqlite import SQLiteStore

if TYPE_CHECKING:  # the pusher (and httpx) load only where witnesses are configured
    from api.witness_pusher import WitnessPusher


def open_store(settings: Settings) -> LedgerStore:
    """The ledger store the settings name (SQLite by default, PostgreSQL by URL)."""
    url = settings.ledger_url
    if url and url.startswith(("postgresql://", "postgres://")):
        from domain.stores.postgres import PostgresStore

        return PostgresStore(postgres_url(url, settings.ledger_password_file))
    if settings.ledger_password_file is not None:
        raise ConfigError(
            "TACHO_LEDGER_PASSWORD_FILE is set but TACHO_LEDGER_URL names no PostgreSQL ledger "
            "(postgresql://...)"
        )
    if url and url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url:
        raise ConfigError(f"unsupported TACHO_LEDGER_URL scheme: {url.split(':', 1)[0]!r}")
    return SQLiteStore(settings.sqlite_path)


def postgres_url(url: str, password_file: Path | None) -> str:
    """``url`` with the password read from ``password_file`` in its user info (percent-encoded).

    A URL that already names a password and a password file is ambiguous: refused. The password
    never appears in an error (the file is named, not its content).
    """
    if password_file is None:
        return url
    try:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"TACHO_LEDGER_PASSWORD_FILE {password_file}: cannot read it: {reason}") from e
    if not password:
        raise ConfigError(f"TACHO_LEDGER_PASSWORD_FILE {password_file} is empty")
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if ":" in userinfo:
        raise ConfigError(
            "TACHO_LEDGER_URL names a password and TACHO_LEDGER_PASSWORD_FILE is set: keep one"
        )
    netloc = f"{userinfo}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def private_dir(path: Path) -> None:
    """Make ``path`` a directory only its owner can enter (0700), creating it if need be."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_mode & 0o077:
        if st.st_uid != os.getuid():
            raise ConfigError(
                f"{path} is open to other users (mode {st.st_mode & 0o777:o}) and not ours to "
                "tighten: keep the signing key in a private directory"
            )
        os.chmod(path, 0o700)


PRIVATE_UMASK = 0o077


def make_data_dir_private(data_dir: Path) -> int:
    """Tighten an existing data directory: every directory in it 0700, every file 0600.

    SQLite, DuckDB and pyarrow create their files themselves, so the process also runs with
    umask 077 (``api.cli.main``); this catches what an older version or another tool left open.
    Returns how many modes were changed; a file owned by someone else is a ConfigError.
    """
    if not data_dir.is_dir():
        return 0
    changed = 0
    for root, _dirs, files in os.walk(data_dir):
        for name, mode in [(root, 0o700)] + [(os.path.join(root, f), 0o600) for f in files]:
            st = os.lstat(name)
            if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
                continue
            try:
                os.chmod(name, mode)
            except PermissionError as e:
                raise ConfigError(
                    f"{name} in the data directory is open to other users (mode "
                    f"{st.st_mode & 0o777:o}) and cannot be made private: {e.strerror}"
                ) from e
            changed += 1
    return changed


def write_secret(path: Path, text: str) -> None:
    """Create a secret file with mode 0600 in a 0700 directory (never readable by others, even briefly)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def load_signer(settings: Settings, store: LedgerStore) -> NoteSigner:
    """The ledger's signing key: created on first use, mode 0600, named after the log origin."""
    path = settings.key_path
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"signing key {path} is readable by others (mode {mode:o}); chmod 600 it")
        return NoteSigner.from_skey(path.read_text().strip())
    origin = store.get_meta("origin") or f"tachograph.local/{secrets.token_hex(4)}"
    signer = NoteSigner.generate(origin)
    write_secret(path, signer.skey + "\n")
    return signer


def build_ledger(settings: Settings, store: LedgerStore | None = None) -> Ledger:
    """A ready ledger over the configured store, signing with the data dir's key."""
    store = store or open_store(settings)
    signer = load_signer(settings, store)
    config = LedgerConfig(
        origin=signer.name,
        checkpoint_every=settings.checkpoint_every,
        checkpoint_interval_s=settings.checkpoint_interval_s,
        max_held=settings.max_held,
        held_timeout_s=settings.held_timeout_s,
        max_held_per_workspace=settings.max_held_per_workspace,
        quarantine_bytes_per_workspace=settings.quarantine_bytes_per_workspace,
        quarantine_bytes_unattributed=settings.quarantine_bytes_unattributed,
        approval_decisions=settings.approval_decisions,
    )
    return Ledger(store, signer, config, clock=time.time)


def witness_pusher(settings: Settings, ledger: Ledger) -> WitnessPusher | None:
    """The pusher for ``TACHO_WITNESSES`` (not started), or None when none is configured."""
    if not settings.witness_list():
        return None
    from api.witness_pusher import build_pusher

    return build_pusher(
        ledger, settings.witness_list(), settings.witness_timeout_s, settings.witness_retry_max_s
    )
