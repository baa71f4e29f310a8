"""Policy revisions: publish Rego as a revision, put one in force, serve it to OPA as a bundle.

Every change is a platform record written with ``Ledger.append_records``: ``policy.published``
(the files, their digest, the workspace's fail-closed setting, who and why) and
``policy.activated`` (which revision is now in force, which was before). OPA downloads the
active revision through the bundle API (``GET /v1/policy/bundle.tar.gz``), whose manifest names
the revision, so every decision OPA makes reports the revision it used, and that revision's
record in the ledger holds the exact files that judged. docs/decisions/0007-policy-bundles.md
says why bundles are served from the ledger rather than read from a directory OPA watches.

When an ``opa`` binary is at hand (``TACHO_OPA_BIN`` or on ``PATH``) every revision is checked
with ``opa check`` before it is recorded (a revision OPA would refuse to load is refused, 422,
with OPA's message), and the record says which OPA checked it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from api.routes.errors import BadParameter, Unavailable
from domain.errors import NotFoundError, TachographError
from domain.ledger import Ledger, iso
from domain.records import Record
from ingest.policies import (
    DEFAULT_FAIL_CLOSED,
    MAX_MESSAGE,
    Activation,
    LedgerPolicies,
    PolicyFilesError,
    PolicyFold,
    Revision,
    check_fail_closed,
    check_files,
    diff,
    files_digest,
    is_revision,
)

CHECK_TIMEOUT_S = 60.0


class PolicyRequestError(BadParameter):
    """A revision's files, settings or message cannot be published, or OPA refused them (422)."""


class PolicyNotFoundError(NotFoundError):
    """No such revision in the workspace, or no revision is in force yet (404)."""


class PolicyRecordError(Unavailable):
    """The change could not be recorded in the ledger, so it did not happen (503)."""


def opa_binary() -> str | None:
    """The ``opa`` to check revisions with: ``TACHO_OPA_BIN``, else ``opa`` on PATH, else None."""
    configured = os.environ.get("TACHO_OPA_BIN")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("opa")


class OpaChecker:
    """``opa check`` over a revision's files in a private temporary directory."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._version: str | None = None

    @property
    def version(self) -> str:
        """``opa <version>`` as the binary reports it."""
        if self._version is None:
            out = subprocess.run([self.binary, "version"], capture_output=True, text=True,
                                 timeout=CHECK_TIMEOUT_S, check=False).stdout
            line = next((ln for ln in out.splitlines() if ln.startswith("Version:")), "Version: ?")
            self._version = "opa " + line.split(":", 1)[1].strip()
        return self._version

    def check(self, files: Mapping[str, str]) -> None:
        """Raise PolicyRequestError with OPA's own message unless OPA would load these files."""
        with tempfile.TemporaryDirectory(prefix="tacho-policy-") as tmp:
            root = Path(tmp)
            for path, text in files.items():
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            try:
                done = subprocess.run([self.binary, "check", "--bundle", str(root)],
                                      capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                                      check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise PolicyRecordError(f"could not run {self.binary} check: {e}") from e
        if done.returncode != 0:
            message = (done.stderr or done.stdout).replace(tmp + "/", "").strip()
            raise PolicyRequestError(f"OPA refuses this policy ({self.version}): {message[:4000]}")


class PolicyService:
    """Publishes and activates a workspace's policy revisions and reads them back."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float],
                 checker: OpaChecker | None = None) -> None:
        self.ledger = ledger
        self.clock = clock
        self.checker = checker
        self.book = LedgerPolicies(ledger.store)
        self._write = threading.Lock()  # a check and its record, one change at a time

    @classmethod
    def with_local_opa(cls, ledger: Ledger, clock: Callable[[], float]) -> PolicyService:
        """A service checking revisions with the ``opa`` found by :func:`opa_binary` (if any)."""
        binary = opa_binary()
        return cls(ledger, clock, OpaChecker(binary) if binary else None)

    def fold(self, workspace: str) -> PolicyFold:
        """The workspace's revisions and activations, caught up with the ledger."""
        return self.book.fold(workspace)

    def active(self, workspace: str) -> tuple[Revision, Activation] | None:
        """The revision in force and its activation (None: no policy is in force)."""
        fold = self.fold(workspace)
        rev, act = fold.active, fold.activation
        return None if rev is None or act is None else (rev, act)

    def revision(self, workspace: str, revision: str) -> Revision:
        """One revision of the workspace (PolicyNotFoundError if there is none by that id)."""
        rev = self.fold(workspace).revisions.get(revision) if is_revision(revision) else None
        if rev is None:
            raise PolicyNotFoundError(f"workspace {workspace!r} has no policy revision {revision[:80]!r}")
        return rev

    def diff(self, workspace: str, old: str | None, new: str) -> list[dict[str, Any]]:
        """Per file, how revision ``new`` differs from ``old`` (None: from nothing)."""
        return diff(self.revision(workspace, old) if old else None, self.revision(workspace, new))

    def publish(self, actor: Mapping[str, Any], workspace: str, files: Mapping[str, str], *,
                fail_closed: list[str] | None = None, message: str | None = None,
                activate: bool = False, reason: str | None = None) -> tuple[Revision, Activation | None]:
        """Record a new revision (checked by OPA when one is at hand), and put it in force too
        when ``activate``. Publishing files identical to the latest revision with the same
        settings records nothing and answers that revision."""
        try:
            checked = check_files(files)
            closed = check_fail_closed(fail_closed if fail_closed is not None else DEFAULT_FAIL_CLOSED)
        except PolicyFilesError as e:
            raise PolicyRequestError(str(e)) from e
        note = _text(message, "message")
        why = _text(reason, "reason")
        digest = files_digest(checked)
        if self.checker is not None:
            self.checker.check(checked)
        with self._write:
            fold = self.fold(workspace)
            latest = max(fold.revisions.values(), key=lambda r: r.index, default=None)
            if latest is not None and latest.digest == digest and latest.fail_closed == closed:
                rev = latest
            else:
                number = len(fold.revisions) + 1
                data: dict[str, Any] = {
                    "revision": f"{number}-{digest.removeprefix('sha256:')[:12]}", "digest": digest,
                    "files": checked, "fail_closed": list(closed),
                    "checked_with": self.checker.version if self.checker else None,
                }
                if note:
                    data["message"] = note
                self._append(actor, workspace, "policy.published", data)
                rev = self.fold(workspace).revisions[data["revision"]]
            act = self._activate(actor, workspace, rev.revision, why) if activate else None
        return rev, act

    def activate(self, actor: Mapping[str, Any], workspace: str, revision: str,
                 reason: str | None = None) -> Activation | None:
        """Put a published revision in force (None: it is in force already, nothing written)."""
        why = _text(reason, "reason")
        with self._write:
            self.revision(workspace, revision)
            return self._activate(actor, workspace, revision, why)

    def _activate(self, actor: Mapping[str, Any], workspace: str, revision: str,
                  reason: str | None) -> Activation | None:
        current = self.fold(workspace).activation
        if current is not None and current.revision == revision:
            return None
        data: dict[str, Any] = {"revision": revision,
                                "previous": current.revision if current else None}
        if reason:
            data["reason"] = reason
        self._append(actor, workspace, "policy.activated", data)
        return self.fold(workspace).activation

    def _append(self, actor: Mapping[str, Any], workspace: str, rtype: str, data: dict[str, Any]) -> int:
        rec = Record(rtype, workspace, iso(self.clock()), dict(actor), data)
        try:
            return self.ledger.append_records([rec])[0]
        except TachographError as e:
            raise PolicyRecordError(f"could not record this {rtype} in the ledger: {e}") from e


def _text(value: str | None, what: str) -> str | None:
    value = (value or "").strip()
    if len(value) > MAX_MESSAGE:
        raise PolicyRequestError(f"a {what} is at most {MAX_MESSAGE} characters, not {len(value)}")
    return value or None

