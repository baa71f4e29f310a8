"""Composition root: build stores, keys and the ledger from settings (nothing at import)."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from api.settings import Settings
from api.witness_pusher import WitnessPusher, build_pusher
from domain.errors import ConfigError
from domain.ledger import Ledger, LedgerConfig
from domain.note import NoteSigner
from domain.ports import LedgerStore
from domain.stores.sqlite import SQLiteStore


def open_store(settings: Settings) -> LedgerStore:
    """The ledger store the settings name (SQLite by default, PostgreSQL by URL)."""
    url = settings.ledger_url
    if url and url.startswith(("postgresql://", "postgres://")):
        from domain.stores.postgres import PostgresStore

        return PostgresStore(url)
    if url and url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url:
        raise ConfigError(f"unsupported TACHO_LEDGER_URL scheme: {url.split(':', 1)[0]!r}")
    return SQLiteStore(settings.sqlite_path)


def write_secret(path: Path, text: str) -> None:
    """Create a secret file with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
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
    )
    return Ledger(store, signer, config, clock=time.time)


def witness_pusher(settings: Settings, ledger: Ledger) -> WitnessPusher | None:
    """The pusher for ``TACHO_WITNESSES`` (not started), or None when none is configured."""
    return build_pusher(
        ledger, settings.witness_list(), settings.witness_timeout_s, settings.witness_retry_max_s
    )
