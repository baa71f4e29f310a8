"""Publish events over HTTP (``POST /v1/events`` with a publisher key): for agents that cannot
reach Kafka. httpx only; no ledger code in the agent's process."""

from __future__ import annotations

import httpx

from ingest.errors import DeliveryError

OK = frozenset({"accepted", "duplicate", "held"})
"""Item statuses that mean the platform has the event (``held``: kept until its gap fills)."""


class HttpTransport:
    """Buffers events up to ``batch_size`` and posts them as one JSON array; an item the platform
    did not take (quarantined, rejected) or a failed request is a DeliveryError on flush."""

    def __init__(self, base_url: str, api_key: str, *, batch_size: int = 1, timeout_s: float = 10.0,
                 client: httpx.Client | None = None) -> None:
        self.batch_size = batch_size
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._buffer: list[tuple[str, bytes]] = []
        self._failures: list[tuple[str, str]] = []
        self.accepted = 0

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Buffer one event; post the buffer when it reaches ``batch_size``."""
        self._buffer.append((event_id, value))
        if len(self._buffer) >= self.batch_size:
            self._post()

    def flush(self, timeout: float | None = None) -> None:
        """Post what is buffered; raise DeliveryError for events the platform did not take."""
        self._post()
        failures, self._failures = self._failures, []
        if failures:
            raise DeliveryError(failures)

    def close(self, timeout: float | None = None) -> None:
        """Flush, then close the connection pool."""
        try:
            self.flush(timeout)
        finally:
            self._client.close()

    def _post(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        body = b"[" + b",".join(value for _, value in batch) + b"]"
        try:
            resp = self._client.post("/v1/events", content=body, headers=self._headers)
        except httpx.HTTPError as e:
            self._failures += [(event_id, f"{type(e).__name__}: {e}") for event_id, _ in batch]
            return
        if resp.status_code != 200:
            why = f"POST /v1/events answered {resp.status_code}: {resp.text[:300]}"
            self._failures += [(event_id, why) for event_id, _ in batch]
            return
        for (event_id, _), item in zip(batch, resp.json()["results"], strict=True):
            if item["status"] in OK:
                self.accepted += 1
            else:
                self._failures.append((event_id, f"{item['status']}: {item.get('reason')}"))
