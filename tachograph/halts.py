"""Kill switches as an agent process sees them: the current halts of its workspace.

``HttpHalts`` asks the platform (``GET /v1/halts`` with the agent's publisher key), keeps the
answer at most ``max_age_s`` (1 s) and then revalidates it with ``If-None-Match`` (a 304 costs
the server one indexed read). The embedded mode reads the ledger's records instead
(``ingest/halts.py``); both hand out a :class:`HaltSet`.

This module imports only the standard library and httpx (only when an ``HttpHalts`` is built:
the API server folds halts with this module's types and never calls out), so the agent runtime
can take it as it is: no DuckDB, FastAPI or ledger code comes with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from tachograph.errors import HaltsUnavailableError as HaltsUnavailableError

if TYPE_CHECKING:
    import httpx

SCOPES = ("workspace", "workflow", "agent", "run")
"""What a halt stops, broadest first: a whole workspace, one workflow, one agent (its id), one run."""

MAX_AGE_S = 1.0
"""How stale the halts an agent acts on may be, at most."""



@dataclass(frozen=True)
class Halt:
    """One halt in force: what it stops, why, who set it, when, and its ``halt.set`` record."""

    scope: str
    target: str
    reason: str
    by: str
    at: str
    index: int

    def to_json(self) -> dict[str, Any]:
        """The halt as ``GET /v1/halts`` lists it."""
        return asdict(self)

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> Halt:
        """A halt from its JSON (raises KeyError / TypeError / ValueError when it is not one)."""
        halt = Halt(str(value["scope"]), str(value["target"]), str(value["reason"]),
                    str(value["by"]), str(value["at"]), int(value["index"]))
        if halt.scope not in SCOPES:
            raise ValueError(f"unknown halt scope {halt.scope!r}")
        return halt

    def refusal(self) -> str:
        """The sentence recorded in a run the halt stopped."""
        return (f"{self.scope} {self.target!r} is halted by its kill switch "
                f"(by {self.by} at {self.at}: {self.reason})")

    def evidence(self) -> dict[str, Any]:
        """What a stopped run records of the halt (``ledger_index``: its ``halt.set`` record)."""
        return {"scope": self.scope, "target": self.target, "by": self.by, "at": self.at,
                "reason": self.reason, "ledger_index": self.index}


@dataclass(frozen=True)
class HaltSet:
    """The halts of one workspace at one moment, and the ETag that names that moment."""

    workspace: str
    halts: tuple[Halt, ...]
    etag: str

    def find(self, workflow: str, agent_id: str, run_id: str) -> Halt | None:
        """The halt that stops this run, broadest scope first; None when it may go on."""
        wanted = {"workspace": self.workspace, "workflow": workflow, "agent": agent_id, "run": run_id}
        hits = [h for h in self.halts if wanted.get(h.scope) == h.target]
        return min(hits, key=lambda h: SCOPES.index(h.scope)) if hits else None

    def get(self, scope: str, target: str) -> Halt | None:
        """The halt in force on one scope and target, if any."""
        return next((h for h in self.halts if h.scope == scope and h.target == target), None)

    def to_json(self) -> dict[str, Any]:
        """The set as ``GET /v1/halts`` answers it."""
        return {"workspace": self.workspace, "etag": self.etag,
                "halts": [h.to_json() for h in self.halts]}

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> HaltSet:
        """A set from the JSON of ``GET /v1/halts``."""
        return HaltSet(str(value["workspace"]), tuple(Halt.from_json(h) for h in value["halts"]),
                       str(value["etag"]))


class HaltSource(Protocol):
    """Where an agent process learns the halts of a workspace (HTTP, or the ledger itself)."""

    def current(self, workspace: str, fresh: bool = False) -> HaltSet:
        """The halts of ``workspace`` in force (at most the source's max age stale, or read now
        with ``fresh``);
        raises HaltsUnavailableError when they cannot be read."""


def halt_path(scope: str, target: str | None = None) -> str:
    """The API path of one halt: the target as a single encoded segment (``/``, ``%``, ``?``
    included), and a target of ``.`` or ``..`` encoded too so no client folds it away."""
    if target is None:
        return f"/v1/halts/{quote(scope, safe='')}"
    segment = quote(target, safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return f"/v1/halts/{quote(scope, safe='')}/{segment}"


class HttpHalts:
    """The halts of the key's workspace over HTTP: cached ``max_age_s``, then revalidated with
    the ETag (``If-None-Match``; 304 keeps the cached set)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_age_s: float = MAX_AGE_S,
        timeout_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        client: httpx.Client | None = None,
    ) -> None:
        if not 0 <= max_age_s <= MAX_AGE_S:
            raise ValueError(f"max_age_s must be between 0 and {MAX_AGE_S} s, not {max_age_s}")
        self.max_age_s = max_age_s
        self.monotonic = monotonic
        import httpx  # here, not at the top: the API server uses this module's types only

        self._httpx = httpx
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._lock = threading.Lock()
        self._cached: HaltSet | None = None
        self._fetched = float("-inf")
        self.requests = 0
        self.not_modified = 0

    def current(self, workspace: str, fresh: bool = False) -> HaltSet:
        """The halts of ``workspace`` (which must be the key's), fetched when the copy is stale
        (``fresh``: revalidated now, e.g. before a side-effecting tool call)."""
        with self._lock:
            now = self.monotonic()
            if self._cached is None or fresh or now - self._fetched >= self.max_age_s:
                self._cached = self._fetch(self._cached)
                self._fetched = now
            cached = self._cached
        if cached.workspace != workspace:
            raise HaltsUnavailableError(
                f"the API key belongs to workspace {cached.workspace!r}, not {workspace!r}: "
                "its halts are not this publisher's")
        return cached

    def _fetch(self, cached: HaltSet | None) -> HaltSet:
        headers = dict(self._headers)
        if cached is not None:
            headers["If-None-Match"] = cached.etag
        self.requests += 1
        try:
            resp = self._client.get("/v1/halts", headers=headers)
        except self._httpx.HTTPError as e:
            raise HaltsUnavailableError(f"cannot read the halts: {type(e).__name__}: {e}") from e
        if resp.status_code == 304 and cached is not None:
            self.not_modified += 1
            return cached
        if resp.status_code != 200:
            raise HaltsUnavailableError(
                f"cannot read the halts: GET /v1/halts answered {resp.status_code}: {resp.text[:300]}")
        try:
            return HaltSet.from_json(resp.json())
        except (ValueError, KeyError, TypeError) as e:
            raise HaltsUnavailableError(f"GET /v1/halts answered something that is not halts: {e}") from e

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
