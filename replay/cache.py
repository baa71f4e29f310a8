"""A response cache for replays against real models, and the answers a replay used.

Real models are slow, cost money and are not deterministic, so a what-if replay against one is
neither free nor repeatable. :class:`ResponseCache` keeps each answer in a SQLite file (default
``<data dir>/replays/cache.db``) under the SHA-256 of the canonical request: the base URL, the
model as its server names it, the messages and every parameter sent (never the API key). A
replay that sends the same request again gets the stored answer (content, tool calls, finish
reason, tokens and the latency measured when it was fresh), so repeating a replay gives
identical results without calling the model; ``refresh`` (``--no-cache``) calls the model anyway
and stores the new answer.

Only adapters that can say what they send are cached (:class:`tachograph.models.OpenAIChatModel`,
``canonical_request``). The simulated models are not: their answers are already a pure, free
function of the request, and caching them would only cost disk.

:class:`ReplayAnswers` counts, for one replay, how many answers came from the cache and how many
were fresh, and keeps the answers it used (bounded) so a stored replay can be re-examined after
the cache is cleared (:meth:`replay.store.ReplayReports.save`, ``answers``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from tachograph.contract.canonical import dumps, loads
from tachograph.models import ChatRequest, ChatResponse, ModelAdapter, ModelRegistry

MAX_KEPT_ANSWERS = 2_000
MAX_KEPT_BYTES = 8 * 2**20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,      -- sha256 hex of the canonical request
    request BLOB NOT NULL,     -- the canonical request (base_url + body)
    response BLOB NOT NULL,    -- canonical JSON of the answer
    stored TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""


def response_json(r: ChatResponse) -> dict[str, Any]:
    """A model answer as JSON (latency an exact decimal)."""
    return {"content": r.content, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
            "latency_ms": r.latency_ms, "finish_reason": r.finish_reason, "tool_calls": r.tool_calls}


def response_of(d: Mapping[str, Any]) -> ChatResponse:
    """The answer stored by :func:`response_json`."""
    return ChatResponse(str(d["content"]), int(d["input_tokens"]), int(d["output_tokens"]),
                        Decimal(str(d["latency_ms"])), d.get("finish_reason"), d.get("tool_calls"))


class ResponseCache:
    """Answers by canonical request, in one SQLite file (safe across threads and processes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None  # opened on first use
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        """The open database (created on first use; call with the lock held)."""
        if self._conn is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # answers hold run contents: owner-only, as the ledger and the reports
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def get(self, key: str) -> ChatResponse | None:
        """The stored answer for a request key, or None."""
        with self._lock:
            row = self._db().execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else response_of(loads(row[0]))

    def put(self, key: str, request: bytes, response: ChatResponse) -> None:
        """Store (or replace) the answer for a request."""
        with self._lock:
            self._db().execute(
                "INSERT OR REPLACE INTO responses (key, request, response) VALUES (?, ?, ?)",
                (key, request, dumps(response_json(response))),
            )

    def stats(self) -> dict[str, int]:
        """Entries and the file's size in bytes."""
        with self._lock:
            (n,) = self._db().execute("SELECT count(*) FROM responses").fetchone()
        return {"entries": int(n), "bytes": self.path.stat().st_size}

    def clear(self) -> int:
        """Forget every answer; how many there were."""
        with self._lock:
            db = self._db()
            (n,) = db.execute("SELECT count(*) FROM responses").fetchone()
            db.execute("DELETE FROM responses")
            db.execute("VACUUM")
        return int(n)

    def close(self) -> None:
        """Close the database (if it was opened)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def request_key(canonical_request: bytes) -> str:
    """The cache key of a canonical request: its SHA-256, hex."""
    return hashlib.sha256(canonical_request).hexdigest()


class ReplayAnswers:
    """What one replay's cached models answered: counts by source, and the answers kept.

    Thread-safe (runs replay in parallel). At most ``max_kept`` distinct answers and
    ``max_bytes`` of them are kept; beyond, they are counted as ``dropped``.
    """

    def __init__(self, max_kept: int = MAX_KEPT_ANSWERS, max_bytes: int = MAX_KEPT_BYTES) -> None:
        self.cached = 0
        self.fresh = 0
        self.dropped = 0
        self.max_kept = max_kept
        self.max_bytes = max_bytes
        self._bytes = 0
        self._kept: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, request: bytes, response: ChatResponse, source: str) -> None:
        """Count one answer (``source`` is ``cache`` or ``model``) and keep it if there is room."""
        with self._lock:
            if source == "cache":
                self.cached += 1
            else:
                self.fresh += 1
            if key in self._kept:
                return
            entry = {"key": key, "source": source, "request": loads(request),
                     "response": response_json(response)}
            size = len(dumps(entry))
            if len(self._kept) >= self.max_kept or self._bytes + size > self.max_bytes:
                self.dropped += 1
                return
            self._kept[key] = entry
            self._bytes += size

    def kept(self) -> list[dict[str, Any]]:
        """The kept answers, in the order they were first used."""
        with self._lock:
            return list(self._kept.values())

    def used(self) -> bool:
        """Whether any answer came through a cached model."""
        with self._lock:
            return bool(self.cached or self.fresh)

    def summary(self) -> dict[str, int]:
        """Counts for the replay report."""
        with self._lock:
            return {"cached": self.cached, "fresh": self.fresh, "kept": len(self._kept),
                    "dropped": self.dropped}


class CachingModel:
    """A model adapter answered from the cache when it has the request, else by the model."""

    def __init__(self, inner: ModelAdapter, cache: ResponseCache, answers: ReplayAnswers,
                 *, refresh: bool = False) -> None:
        self.inner = inner
        self.cache = cache
        self.answers = answers
        self.refresh = refresh

    @property
    def name(self) -> str:
        """The wrapped model's name."""
        return self.inner.name

    @property
    def provider(self) -> str:
        """The wrapped model's provider."""
        return self.inner.provider

    @property
    def price(self) -> Any:
        """The wrapped model's own configured price, if any (see ``call_cost``)."""
        return getattr(self.inner, "price", None)

    def complete(self, request: ChatRequest) -> ChatResponse:
        """The stored answer to this exact request, or the model's (then stored)."""
        canonical: bytes = self.inner.canonical_request(request)  # type: ignore[attr-defined]
        key = request_key(canonical)
        if not self.refresh:
            hit = self.cache.get(key)
            if hit is not None:
                self.answers.add(key, canonical, hit, "cache")
                return hit
        response = self.inner.complete(request)
        self.cache.put(key, canonical, response)
        self.answers.add(key, canonical, response, "model")
        return response


def cacheable(adapter: ModelAdapter) -> bool:
    """Whether an adapter can say what it sends (so its answers can be cached)."""
    return callable(getattr(adapter, "canonical_request", None))


class CachedModels(ModelRegistry):
    """A model registry whose cacheable adapters answer through a :class:`ResponseCache`."""

    def __init__(self, inner: ModelRegistry, cache: ResponseCache, answers: ReplayAnswers,
                 *, refresh: bool = False) -> None:
        super().__init__(inner.http, sleep=inner.sleep, clock=inner.clock, prices=inner.prices)
        self.inner = inner
        self.cache = cache
        self.answers = answers
        self.refresh = refresh
        self._wrapped: dict[str, ModelAdapter] = {}
        self._wrap_lock = threading.Lock()

    def names(self) -> list[str]:
        """The wrapped registry's names."""
        return self.inner.names()

    def get(self, name: str) -> ModelAdapter:
        """The wrapped registry's adapter, through the cache when it is cacheable."""
        with self._wrap_lock:
            if name not in self._wrapped:
                adapter = self.inner.get(name)
                self._wrapped[name] = (
                    CachingModel(adapter, self.cache, self.answers, refresh=self.refresh)
                    if cacheable(adapter) else adapter
                )
            return self._wrapped[name]
