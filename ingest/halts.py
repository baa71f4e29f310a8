"""The read side of the per-workflow kill switches: what the publisher SDK checks before a run.

The console (``api/console/kill_switch.py``) flips the switches and keeps them in a small SQLite
file under the data dir; this module only reads that file, so agent services need nothing from
``api``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from domain.errors import ConfigError

HALT_COLUMNS = "workspace, workflow, halted, reason, by, at, ledger_index"

HaltCheck = Callable[[str, str], "HaltState | None"]
"""``check(workspace, workflow)``: the halt of a workflow whose kill switch is on, else None."""


@dataclass(frozen=True)
class HaltState:
    """The current state of one workflow's kill switch."""

    workspace: str
    workflow: str
    halted: bool
    reason: str
    by: str
    at: str
    ledger_index: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The state as JSON."""
        return asdict(self)

    def refusal(self) -> str:
        """The sentence an SDK records when it refuses to start a run."""
        return (f"workflow {self.workflow!r} is halted by its kill switch "
                f"(by {self.by} at {self.at}: {self.reason})")


def halt_state(row: tuple[Any, ...]) -> HaltState:
    """A state from a row of ``HALT_COLUMNS``."""
    return HaltState(row[0], row[1], bool(row[2]), row[3], row[4], row[5], row[6])


def switches_path(data_dir: Path | str) -> Path:
    """Where the kill switches of a data dir are kept."""
    return Path(data_dir) / "console" / "kill_switches.db"


def is_halted(data_dir: Path | str, workspace: str, workflow: str) -> HaltState | None:
    """The halt of a workflow if its kill switch is on, else None (read-only; no file: None)."""
    path = switches_path(data_dir)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute(
                f"SELECT {HALT_COLUMNS} FROM kill_switches "
                "WHERE workspace = ? AND workflow = ? AND halted = 1",
                (workspace, workflow),
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:  # fail closed: an unreadable switch file refuses to answer
        if "no such table" in str(e):
            return None
        raise ConfigError(f"cannot read the kill switch file {path}: {e}") from e
    return halt_state(row) if row else None


def halt_check(data_dir: Path | str) -> HaltCheck:
    """The kill-switch check of a data dir, for ``Publisher(halt_check=...)``."""
    return partial(is_halted, Path(data_dir))
