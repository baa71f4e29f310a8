"""The platform as a running agent sees it: the kill switches in force, people's decisions, and
the workspace's policy settings.

:class:`HttpPlatform` talks to ``tacho serve`` with the agent's publisher key (``GET /v1/halts``,
``GET /v1/approvals/{id}?wait=``); the embedded mode (``ingest/embedded.py``) answers the same
two questions from a ledger in-process. Only the standard library and httpx are imported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from tachograph.errors import ApprovalsUnavailableError
from tachograph.halts import HaltSet, HttpHalts

LONG_POLL_S = 25.0
"""The longest single ``?wait=`` the runtime asks for (the API allows 30)."""
POLICY_CACHE_S = 60.0
"""How long the workspace's fail-closed setting is reused before it is read again."""


@dataclass(frozen=True)
class ApprovalStatus:
    """An approval as the platform knows it (``status``: pending, approved, rejected, expired)."""

    approval_id: str
    status: str
    decided_by: str | None = None
    decided_at: str | None = None
    reason: str | None = None

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> ApprovalStatus:
        """From the JSON of ``GET /v1/approvals/{id}``."""
        return ApprovalStatus(str(value["approval_id"]), str(value["status"]), value.get("decided_by"),
                              value.get("decided_at"), value.get("reason"))


class Platform(Protocol):
    """What flows back from the platform to a running agent."""

    def halts(self, workspace: str, fresh: bool = False) -> HaltSet:
        """The halts of ``workspace`` in force (at most a second stale; ``fresh``: read now); raises
        HaltsUnavailableError when they cannot be read."""

    def approval(self, workspace: str, approval_id: str, wait_s: float) -> ApprovalStatus | None:
        """The approval's status, waiting up to ``wait_s`` for it to leave ``pending``; None when
        the platform has not seen the request yet (it may still be on its way through Kafka)."""

    def policy_fail_closed(self, workspace: str) -> tuple[str, ...] | None:
        """The side effects the workspace's policy in force fails closed for when OPA cannot be
        reached (None: the platform cannot say; the runtime then uses its default)."""

    def close(self) -> None:
        """Release connections."""


class HttpPlatform:
    """``tacho serve`` over HTTP with a publisher key."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic, client: Any = None) -> None:
        import httpx

        self._httpx = httpx
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._halts = HttpHalts(base_url, api_key, monotonic=monotonic, client=self._client)
        self.timeout_s = timeout_s
        self._monotonic = monotonic
        self._fail_closed: tuple[float, tuple[str, ...]] | None = None

    def halts(self, workspace: str, fresh: bool = False) -> HaltSet:
        """The halts of the key's workspace (cached a second, revalidated with the ETag)."""
        return self._halts.current(workspace, fresh)

    def approval(self, workspace: str, approval_id: str, wait_s: float) -> ApprovalStatus | None:
        """``GET /v1/approvals/{id}?wait=`` (the id encoded as one path segment)."""
        wait = max(0.0, min(wait_s, LONG_POLL_S))
        path = f"/v1/approvals/{quote(approval_id, safe='')}"
        try:
            resp = self._client.get(path, params={"wait": f"{wait:.3f}"}, headers=self._headers,
                                    timeout=self.timeout_s + wait)
        except self._httpx.HTTPError as e:
            raise ApprovalsUnavailableError(
                f"cannot read approval {approval_id!r}: {type(e).__name__}: {e}") from e
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ApprovalsUnavailableError(
                f"cannot read approval {approval_id!r}: GET {path} answered {resp.status_code}: "
                f"{resp.text[:300]}")
        try:
            return ApprovalStatus.from_json(resp.json())
        except (ValueError, KeyError, TypeError) as e:
            raise ApprovalsUnavailableError(f"GET {path} answered something that is not an approval: {e}") from e

    def policy_fail_closed(self, workspace: str) -> tuple[str, ...] | None:
        """``GET /v1/policy``'s ``fail_closed`` (cached a minute; None when it cannot be read)."""
        now = self._monotonic()
        if self._fail_closed is not None and now - self._fail_closed[0] < POLICY_CACHE_S:
            return self._fail_closed[1]
        try:
            resp = self._client.get("/v1/policy", headers=self._headers, timeout=self.timeout_s)
            value = resp.json()["fail_closed"] if resp.status_code == 200 else None
        except (self._httpx.HTTPError, ValueError, KeyError, TypeError):
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        self._fail_closed = (now, tuple(value))
        return self._fail_closed[1]

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
