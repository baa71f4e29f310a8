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
    REVERT = "revert"
    HALT = "halt"
    READ_HALTS = "read_halts"
    WEBHOOK_STATUS = "webhook_status"


GRANTS: dict[str, frozenset[Capability]] = {
    "publisher": frozenset({Capability.INGEST, Capability.READ_HALTS}),
    "auditor": frozenset(
        {
            Capability.READ_HISTORY,
            Capability.READ_AUDIT_LOG,
            Capability.EVIDENCE,
            Capability.READ_LOG,
            Capability.QUARANTINE,
            Capability.EXPORT,
            Capability.WEBHOOK_STATUS,
        }
    ),
    "analyst": frozenset({Capability.ANALYTICS, Capability.EXPORT}),
    "engineer": frozenset({Capability.REPLAY, Capability.READ_HISTORY, Capability.REVERT,
                           Capability.READ_HALTS}),
    "admin": frozenset({Capability.KEYS, Capability.HALT, Capability.READ_HALTS, Capability.REPLAY,
                        Capability.WEBHOOK_STATUS}),
    "approver": frozenset({Capability.APPROVE, Capability.REVERT, Capability.READ_HISTORY,
                           Capability.HALT, Capability.READ_HALTS}),
}


CONSOLE_ONLY_ROLES = frozenset({"approver"})
"""Roles whose grants hold in the console only, but for ``OPEN_TO_CONSOLE_ONLY_ROLES``: every
other API endpoint refuses their keys (403)."""

OPEN_TO_CONSOLE_ONLY_ROLES = frozenset({Capability.HALT, Capability.READ_HALTS})
"""What a console-only role may still do over the API: the kill switches (issue 14), so a
person can stop agents from a script or a pager as well as from the console."""


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


def may_use_api(role: str, capability: Capability) -> bool:
    """Whether an API key of ``role`` may do ``capability`` (what ``check_api`` allows)."""
    return capability in GRANTS.get(role, frozenset()) and (
        role not in CONSOLE_ONLY_ROLES or capability in OPEN_TO_CONSOLE_ONLY_ROLES)


def check_api(role: str, capability: Capability) -> None:
    """``check`` for an API request: console-only roles are refused whatever they hold, but for
    ``OPEN_TO_CONSOLE_ONLY_ROLES``."""
    if role in CONSOLE_ONLY_ROLES and capability not in OPEN_TO_CONSOLE_ONLY_ROLES:
        raise ForbiddenError(
            f"role {role!r} is for the console only: sign in at /console; "
            f"over the API it may do nothing ({capability.value.replace('_', ' ')} needs one of: "
            f"{', '.join(r for r in roles_with(capability) if r not in CONSOLE_ONLY_ROLES)})"
        )
    check(role, capability)
