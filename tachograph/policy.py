"""The runtime's Open Policy Agent client: ask OPA for a decision over its REST Data API.

``POST /v1/data/<path>?provenance=true`` with ``{"input": ...}``. The rule at ``<path>`` must
produce an object ``{"decision": "allow" | "deny" | "require_approval", "reason": "..."}`` (the
words of ``policy.evaluated``). OPA's answer also carries, when decision logging is on, its
``decision_id``, and, through provenance, the revision of every bundle it has loaded: both are
read from the same response as the decision, so the revision recorded is the one that judged.

This module imports only the standard library, httpx and the contract's JSON codec (Decimal
amounts in the input are sent as exact JSON numbers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import httpx

from tachograph.contract.canonical import dumps, loads
from tachograph.errors import PolicyResponseError, PolicyUnavailableError

Decision = Literal["allow", "deny", "require_approval"]
DECISIONS: tuple[Decision, ...] = ("allow", "deny", "require_approval")

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(/[A-Za-z_][A-Za-z0-9_-]*)*")


@dataclass(frozen=True)
class PolicyDecision:
    """One answer of OPA: what it decided, why, and which decision and policy revision it was.

    ``decision_id`` is None when OPA's decision logging is off; ``revision`` is None when the
    policy was not loaded from a bundle with a revision.
    """

    result: Decision
    reason: str
    decision_id: str | None
    revision: str | None


class OpaClient:
    """Ask one OPA server for decisions at one rule path (e.g. ``tachograph/decision``).

    Args:
        base_url: OPA's address, e.g. ``http://127.0.0.1:8181``.
        path: the rule's path under ``/v1/data`` (package path, then rule name).
        timeout_s: bound on connecting and on waiting for the answer; past it the decision is
            :class:`PolicyUnavailableError`, never a wait without end.
        client: an httpx client to use instead of one of our own (its base URL is ignored).
    """

    def __init__(
        self,
        base_url: str,
        path: str = "tachograph/decision",
        *,
        timeout_s: float = 2.0,
        client: httpx.Client | None = None,
    ) -> None:
        path = path.strip("/")
        if not _PATH.fullmatch(path):
            raise ValueError(f"policy path {path!r} is not a rule path like 'tachograph/decision'")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.path = path
        self.url = f"{self.base_url}/v1/data/{path}"
        self._client = client or httpx.Client(timeout=timeout_s)
        self._timeout = timeout_s

    def decide(self, input: Mapping[str, Any]) -> PolicyDecision:
        """OPA's decision for ``input``.

        Raises:
            PolicyUnavailableError: OPA unreachable, timed out, or answered 5xx.
            PolicyResponseError: OPA answered something that is not a decision (named).
            TypeError: ``input`` is not a mapping of JSON values.
        """
        if not isinstance(input, Mapping):
            raise TypeError(f"policy input must be a mapping, not {type(input).__name__}")
        body = dumps({"input": dict(input)})
        body_json = self._post(body)
        return _decision(body_json, self.path)

    def _post(self, body: bytes) -> dict[str, Any]:
        where = f"OPA at {self.base_url}"
        try:
            resp = self._client.post(
                self.url, params={"provenance": "true"}, content=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException as e:
            raise PolicyUnavailableError(
                f"{where} did not answer within {self._timeout:g}s ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise PolicyUnavailableError(f"{where} unreachable: {type(e).__name__}: {e}") from e
        if resp.status_code >= 500:
            raise PolicyUnavailableError(
                f"{where} answered {resp.status_code}: {resp.text[:300]}")
        if resp.status_code != 200:
            raise PolicyResponseError(
                f"{where} refused the query for data.{self._dotted}: {resp.status_code} "
                f"{resp.text[:300]}")
        try:
            parsed = loads(resp.content)
        except ValueError as e:
            raise PolicyResponseError(f"{where} answered with something that is not JSON: {e}") \
                from e
        if not isinstance(parsed, dict):
            raise PolicyResponseError(
                f"{where} answered a JSON {type(parsed).__name__}, not an object")
        return parsed

    @property
    def _dotted(self) -> str:
        return self.path.replace("/", ".")

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> OpaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decision(body: dict[str, Any], path: str) -> PolicyDecision:
    """The :class:`PolicyDecision` in an answer of ``POST /v1/data/<path>``."""
    rule = f"data.{path.replace('/', '.')}"
    if "result" not in body:
        raise PolicyResponseError(
            f"{rule} is undefined: no policy defines it, or no rule body matched this input")
    result = body["result"]
    if not isinstance(result, dict):
        raise PolicyResponseError(
            f"{rule} must be an object {{decision, reason}}, not {_shown(result)}")
    decision = result.get("decision")
    if decision not in DECISIONS:
        raise PolicyResponseError(
            f"{rule}.decision must be one of {', '.join(DECISIONS)}, not {_shown(decision)}")
    reason = result.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise PolicyResponseError(f"{rule}.reason must be a non-empty string, not {_shown(reason)}")
    decision_id = body.get("decision_id")
    if decision_id is not None and not isinstance(decision_id, str):
        raise PolicyResponseError(f"decision_id must be a string, not {_shown(decision_id)}")
    return PolicyDecision(
        result=cast(Decision, decision), reason=reason, decision_id=decision_id,
        revision=_revision(body.get("provenance")),
    )


def _revision(provenance: object) -> str | None:
    """The policy revision in OPA's provenance: the revision of its one bundle, or
    ``name=revision`` pairs (sorted, comma-separated) when several are loaded; None without."""
    if not isinstance(provenance, dict):
        return None
    bundles = provenance.get("bundles")
    if isinstance(bundles, dict) and bundles:
        revisions = {
            str(name): str(b.get("revision") or "") for name, b in bundles.items()
            if isinstance(b, dict)
        }
        revisions = {name: rev for name, rev in revisions.items() if rev}
        if len(revisions) == 1:
            return next(iter(revisions.values()))
        if revisions:
            return ",".join(f"{name}={rev}" for name, rev in sorted(revisions.items()))
        return None
    legacy = provenance.get("revision")  # OPA's pre-multi-bundle field
    return legacy if isinstance(legacy, str) and legacy else None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def policy_input(
    *,
    workspace: str,
    workflow: str,
    run_id: str,
    agent: Mapping[str, Any],
    mode: str,
    risk_tier: str,
    kind: str,
    name: str,
    arguments: Mapping[str, Any],
    side_effect: str,
    limits: Mapping[str, Any],
    used: Mapping[str, Any],
) -> dict[str, Any]:
    """The input document OPA is asked about for one tool call (``kind`` ``tool``: ``name`` under
    ``tool``) or change (``kind`` ``change``: ``name`` under ``target``).

    The one definition, used by the runtime before every action and by what-if policy replay
    when it asks a candidate policy about recorded actions, so the two cannot drift.
    ``limits`` is the run's budget, ``used`` its use so far (``model_calls``, ``tokens``,
    ``cost_usd``).
    """
    if kind not in ("tool", "change"):
        raise ValueError(f"policy input kind must be 'tool' or 'change', not {kind!r}")
    return {
        "workspace": workspace, "workflow": workflow, "run_id": run_id, "agent": dict(agent),
        "mode": mode, "risk_tier": risk_tier, "kind": kind,
        ("tool" if kind == "tool" else "target"): name, "arguments": dict(arguments),
        "side_effect": side_effect, "budget": {"limits": dict(limits), "used": dict(used)},
    }
