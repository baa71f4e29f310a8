"""Who may do what: roles mapped to capabilities, checked on every request."""

from __future__ import annotations

from enum import StrEnum

from domain.errors import TachographError


class Capability(StrEnum):
    """Things a request may do; each endpoint needs exactly one."""

    INGEST = "ingest"
    READ_HISTORY = "read_history"
    READ_AUDIT_LOG = "read_audit_log"
    EVIDENCE = "evidence"
    READ_LOG = "read_log"
    QUARANTINE = "quarantine"
    ANALYTICS = "analytics"
    EXPORT = "export"
    REPLAY = "replay"
    KEYS = "keys"
    APPROVE = "approve"
    APPROVAL_QUEUE = "approval_queue"
    APPROVAL_STATUS = "approval_status"
    REVERT = "revert"
    HALT = "halt"
    READ_HALTS = "read_halts"
    WEBHOOK_STATUS = "webhook_status"
    READ_POLICY = "read_policy"
    MANAGE_POLICY = "manage_policy"
    POLICY_BUNDLE = "policy_bundle"


GRANTS: dict[str, frozenset[Capability]] = {
    "publisher": frozenset({Capability.INGEST, Capability.READ_HALTS, Capability.APPROVAL_STATUS,
                            Capability.POLICY_BUNDLE}),
    "auditor": frozenset(
        {
            Capability.READ_HISTORY,
            Capability.READ_AUDIT_LOG,
            Capability.EVIDENCE,
            Capability.READ_LOG,
            Capability.QUARANTINE,
            Capability.EXPORT,
            Capability.WEBHOOK_STATUS,
            Capability.APPROVAL_QUEUE,
            Capability.APPROVAL_STATUS,
            Capability.READ_POLICY,
        }
    ),
    "analyst": frozenset({Capability.ANALYTICS, Capability.EXPORT}),
    "engineer": frozenset({Capability.REPLAY, Capability.READ_HISTORY, Capability.REVERT,
                           Capability.READ_HALTS, Capability.READ_POLICY}),
    "admin": frozenset({Capability.KEYS, Capability.HALT, Capability.READ_HALTS, Capability.REPLAY,
                        Capability.WEBHOOK_STATUS, Capability.APPROVAL_QUEUE, Capability.APPROVAL_STATUS,
                        Capability.READ_POLICY, Capability.MANAGE_POLICY, Capability.POLICY_BUNDLE}),
    "approver": frozenset({Capability.APPROVE, Capability.REVERT, Capability.READ_HISTORY,
                           Capability.HALT, Capability.READ_HALTS, Capability.APPROVAL_QUEUE,
                           Capability.APPROVAL_STATUS}),
}


CONSOLE_ONLY_ROLES = frozenset({"approver"})
"""Roles whose grants hold in the console only, but for ``API_GRANTS_OF_CONSOLE_ROLES``: every
other API endpoint refuses their keys (403)."""
API_GRANTS_OF_CONSOLE_ROLES: dict[str, frozenset[Capability]] = {
    "approver": frozenset({Capability.APPROVE, Capability.APPROVAL_QUEUE, Capability.APPROVAL_STATUS,
                           Capability.HALT, Capability.READ_HALTS}),
}
"""What a console role may do over the API too: the approvals API (the console uses it as well)
and the kill switches, so a person can stop agents from a script or a pager as well."""


def api_may(role: str, capability: Capability) -> bool:
    """Whether a key of ``role`` may use ``capability`` over the API."""
    if role in CONSOLE_ONLY_ROLES and capability not in API_GRANTS_OF_CONSOLE_ROLES.get(role, frozenset()):
        return False
    return capability in GRANTS.get(role, frozenset())


class ForbiddenError(TachographError):
    """The key is valid but its role lacks the capability an endpoint needs (HTTP 403)."""


def roles_with(capability: Capability) -> list[str]:
    """Roles that hold a capability (for error messages and docs)."""
    return [role for role, caps in GRANTS.items() if capability in caps]


def check(role: str, capability: Capability) -> None:
    """Raise ``ForbiddenError`` unless ``role`` holds ``capability``."""
    if capability not in GRANTS.get(role, frozenset()):
        raise ForbiddenError(
            f"role {role!r} may not {capability.value.replace('_', ' ')}; "
            f"needs one of: {', '.join(roles_with(capability))}"
        )


def check_api(role: str, capability: Capability) -> None:
    """``check`` for an API request: console-only roles are refused beyond their API grants."""
    if role in CONSOLE_ONLY_ROLES and capability not in API_GRANTS_OF_CONSOLE_ROLES.get(role, frozenset()):
        raise ForbiddenError(
            f"role {role!r} is for the console only: sign in at /console; "
            f"over the API it may do nothing ({capability.value.replace('_', ' ')} needs one of: "
            f"{', '.join(r for r in roles_with(capability) if api_may(r, capability))})"
        )
    check(role, capability)
