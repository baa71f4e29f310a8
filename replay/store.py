"""Stored replay reports: one canonical JSON file per replay under ``<data dir>/replays/``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from replay.errors import ReplayNotFoundError
from tachograph.contract.canonical import dumps, loads

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class ReplayReports:
    """Replay reports on disk, by replay id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, replay_id: str) -> Path:
        if not _ID.match(replay_id):
            raise ReplayNotFoundError(f"{replay_id!r} is not a replay id")
        return self.directory / f"{replay_id}.json"

    def save(self, report: Mapping[str, Any]) -> Path:
        """Write a report atomically (temp file, then rename)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._path(str(report["replay_id"]))
        tmp = path.with_suffix(".tmp")
        # reports hold run contents: owner-only (0600), as the ledger
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(dumps(report))
        os.chmod(tmp, 0o600)  # a stale .tmp left with another mode
        os.replace(tmp, path)
        return path

    def load(self, replay_id: str) -> dict[str, Any]:
        """A stored report (raises ReplayNotFoundError naming the id)."""
        path = self._path(replay_id)
        if not path.exists():
            raise ReplayNotFoundError(f"no replay {replay_id!r} in {self.directory}")
        report: dict[str, Any] = loads(path.read_bytes())
        return report

    def list(self) -> list[dict[str, Any]]:
        """Every stored replay's headline figures, oldest first."""
        out: list[dict[str, Any]] = []
        if not self.directory.exists():
            return out
        for path in sorted(self.directory.glob("*.json")):
            r = loads(path.read_bytes())
            s = r["summary"]
            out.append({
                "replay_id": r["replay_id"], "created": r["created"], "mode": r["mode"],
                "agent": r["agent"], "candidate": r["candidate"], "runs": s["runs"],
                "outcome_change_rate": s["outcome_change_rate"], "passed": r["gate"]["passed"],
            })
        return sorted(out, key=lambda r: (r["created"], r["replay_id"]))
