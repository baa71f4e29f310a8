"""Stored replay reports: one canonical JSON file per replay under ``<data dir>/replays/``, and
the model answers a replay used beside it (``answers/<id>.json``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from replay.cache import ReplayAnswers
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

    def save(self, report: Mapping[str, Any], answers: ReplayAnswers | None = None) -> Path:
        """Write a report atomically (temp file, then rename), and the model answers it used
        (the cached models' answers, bounded: :class:`replay.cache.ReplayAnswers`) beside it."""
        replay_id = str(report["replay_id"])
        if answers is not None and answers.used():
            _write(self._answers_path(replay_id),
                   {"replay_id": replay_id, **answers.summary(), "answers": answers.kept()})
        path = self._path(replay_id)
        _write(path, report)
        return path

    def _answers_path(self, replay_id: str) -> Path:
        return self._path(replay_id).parent / "answers" / f"{replay_id}.json"

    def answers(self, replay_id: str) -> dict[str, Any]:
        """The model answers kept with a replay: counts and ``answers`` (key, source — ``cache``
        or ``model`` —, request, response); ReplayNotFoundError if it kept none."""
        path = self._answers_path(replay_id)
        if not path.exists():
            self.load(replay_id)  # no such replay at all: say so
            raise ReplayNotFoundError(
                f"replay {replay_id!r} kept no model answers (it called no model over HTTP)")
        data: dict[str, Any] = loads(path.read_bytes())
        return data

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


def _write(path: Path, value: Any) -> None:
    """Canonical JSON to ``path`` atomically, owner-only (reports hold run contents, as the
    ledger)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(dumps(value))
    os.chmod(tmp, 0o600)  # a stale .tmp left with another mode
    os.replace(tmp, path)
