"""Per-workflow kill switches, kept durably in a small SQLite file with who flipped them and when.

This is the write side. The read side (:func:`~ingest.halts.is_halted`) lives in ``ingest/halts.py``
because the publisher SDK asks it before it starts a run: a halted workflow gets no new runs. Every
flip is also recorded in the ledger by the console (see ``api/console/actions.py``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from domain.errors import ConfigError, TachographError
from ingest.halts import HALT_COLUMNS, HaltState, halt_state, is_halted, switches_path

__all__ = ["HaltState", "KillSwitchError", "KillSwitches", "check_flip", "is_halted", "switches_path"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS kill_switches (
  workspace TEXT NOT NULL, workflow TEXT NOT NULL, halted INTEGER NOT NULL,
  reason TEXT NOT NULL, by TEXT NOT NULL, at TEXT NOT NULL, ledger_index INTEGER,
  PRIMARY KEY (workspace, workflow));
CREATE TABLE IF NOT EXISTS kill_switch_flips (
  id INTEGER PRIMARY KEY AUTOINCREMENT, workspace TEXT NOT NULL, workflow TEXT NOT NULL,
  halted INTEGER NOT NULL, reason TEXT NOT NULL, by TEXT NOT NULL, at TEXT NOT NULL,
  ledger_index INTEGER);
"""


class KillSwitchError(TachographError):
    """A kill switch request is invalid: empty workflow or reason, too long (HTTP 422)."""


def check_flip(workflow: str, reason: str) -> tuple[str, str]:
    """The trimmed workflow and reason of a flip (raises KillSwitchError naming what is wrong)."""
    workflow, reason = workflow.strip(), reason.strip()
    if not workflow or len(workflow) > 512:
        raise KillSwitchError("a kill switch needs a workflow name (1-512 characters)")
    if not reason or len(reason) > 2000:
        raise KillSwitchError("say why you flip the kill switch (a reason of 1-2000 characters)")
    return workflow, reason


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_COLS = HALT_COLUMNS


class KillSwitches:
    """Read and flip kill switches (one row per workflow, plus the history of every flip)."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the kill switch file {self.path}: {e}") from e

    def flip(self, workspace: str, workflow: str, halted: bool, by: str, reason: str,
             ledger_index: int | None = None) -> HaltState:
        """Halt or resume a workflow; the flip is kept in the history too."""
        workflow, reason = check_flip(workflow, reason)
        state = HaltState(workspace, workflow, halted, reason, by, _iso(self.clock()), ledger_index)
        row = (workspace, workflow, int(halted), reason, by, state.at, ledger_index)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(f"INSERT OR REPLACE INTO kill_switches ({_COLS}) VALUES (?,?,?,?,?,?,?)", row)
                self._conn.execute(f"INSERT INTO kill_switch_flips ({_COLS}) VALUES (?,?,?,?,?,?,?)", row)
            except sqlite3.Error:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return state

    def get(self, workspace: str, workflow: str) -> HaltState | None:
        """The switch of one workflow, if it was ever flipped."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLS} FROM kill_switches WHERE workspace = ? AND workflow = ?",
                (workspace, workflow),
            ).fetchone()
        return halt_state(row) if row else None

    def switches(self, workspace: str) -> list[HaltState]:
        """Every switch of a workspace, by workflow."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM kill_switches WHERE workspace = ? ORDER BY workflow", (workspace,)
            ).fetchall()
        return [halt_state(r) for r in rows]

    def history(self, workspace: str, limit: int = 50) -> list[HaltState]:
        """The latest flips of a workspace, newest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM kill_switch_flips WHERE workspace = ? ORDER BY id DESC LIMIT ?",
                (workspace, limit),
            ).fetchall()
        return [halt_state(r) for r in rows]

    def close(self) -> None:
        """Close the file."""
        self._conn.close()
