"""``embedded:/path/to/data``: the agent runtime's transport into a ledger in this process.

Registered as the ``embedded`` entry point of ``tachograph.transports`` (pyproject.toml), so the
runtime finds it only where the platform is installed. The data directory is opened as
``tacho serve`` opens it (TACHO_* settings apply; the path given wins over TACHO_DATA_DIR).
"""

from __future__ import annotations

from pathlib import Path

from api.bootstrap import build_ledger, make_data_dir_private
from api.settings import Settings
from ingest.embedded import LedgerPlatform, LedgerTransport


def connect(path: str, workspace: str) -> tuple[LedgerTransport, LedgerPlatform]:
    """The transport and platform link of the ledger in ``path`` (default: TACHO_DATA_DIR)."""
    settings = Settings(data_dir=Path(path)) if path else Settings()
    make_data_dir_private(settings.data_dir)
    ledger = build_ledger(settings)
    return LedgerTransport(ledger), LedgerPlatform(ledger)
