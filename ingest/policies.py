"""Policy revisions from the ledger: what each workspace has published, and which one is in force.

A revision is a ``policy.published`` platform record (its files, their digest, its settings);
making it the one in force is a ``policy.activated`` record. Both are written only by the
platform (``api/policies.py``), so the ledger holds every revision that was ever in force and
when it became so: the revision OPA reports with each decision (``policy.evaluated.revision``)
names the record whose files judged that call. The bundle OPA downloads is built from the
active revision's record here (:func:`bundle_bytes`), byte for byte the same every time.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import io
import re
import tarfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.errors import TachographError
from domain.ports import LedgerStore
from tachograph.contract.canonical import dumps, loads

POLICY_TYPES = ("policy.published", "policy.activated")
MAX_FILES = 100
MAX_POLICY_BYTES = 1_048_576
"""The most a revision's files may hold together (UTF-8 bytes)."""
MAX_MESSAGE = 2000
SIDE_EFFECTS = ("none", "read", "write")
DEFAULT_FAIL_CLOSED: tuple[str, ...] = ("write",)
REVISION = r"[1-9][0-9]{0,8}-[0-9a-f]{12}"
"""What a revision id is: the workspace's publication number, then the files' digest (12 hex)."""
_REVISION = re.compile(REVISION)
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,127}){0,7}")


class PolicyFilesError(TachographError):
    """A policy revision's files cannot be published (bad name, kind, encoding or size)."""


def check_files(files: Mapping[str, str]) -> dict[str, str]:
    """The files of a revision, sorted by path, after checking each path and the total size.

    A path is relative, at most 8 segments of ``[A-Za-z0-9._-]`` (no ``..``, no leading dot), and
    names a Rego file (``.rego``) or an OPA data file (``data.json``, whose content must be a
    JSON object). Raises PolicyFilesError naming the first problem.
    """
    if not files:
        raise PolicyFilesError("a policy revision needs at least one .rego file")
    if len(files) > MAX_FILES:
        raise PolicyFilesError(f"{len(files)} files in one revision; at most {MAX_FILES}")
    total = 0
    for path, text in files.items():
        if not isinstance(path, str) or not _FILE.fullmatch(path) or ".." in path.split("/"):
            raise PolicyFilesError(
                f"file path {str(path)[:80]!r} is not a relative path of [A-Za-z0-9._-] segments")
        if not isinstance(text, str):
            raise PolicyFilesError(f"{path}: content must be text, not {type(text).__name__}")
        name = path.rsplit("/", 1)[-1]
        if not (name.endswith(".rego") or name == "data.json"):
            raise PolicyFilesError(f"{path}: only .rego files and data.json files go into a policy")
        if name == "data.json":
            try:
                value = loads(text.encode())
            except ValueError as e:
                raise PolicyFilesError(f"{path} is not JSON: {e}") from e
            if not isinstance(value, dict):
                raise PolicyFilesError(f"{path} must hold a JSON object")
        total += len(text.encode())
        if total > MAX_POLICY_BYTES:
            raise PolicyFilesError(f"the files hold over {MAX_POLICY_BYTES} bytes; a revision holds at most that")
    if not any(p.endswith(".rego") for p in files):
        raise PolicyFilesError("a policy revision needs at least one .rego file")
    return {p: files[p] for p in sorted(files)}


def files_digest(files: Mapping[str, str]) -> str:
    """``sha256:<hex>`` of the canonical JSON of the (sorted) files: the revision's content id."""
    return "sha256:" + hashlib.sha256(dumps(dict(sorted(files.items())))).hexdigest()


def check_fail_closed(values: Iterable[str]) -> tuple[str, ...]:
    """The side effects whose actions are denied while OPA cannot be reached (in the order of
    ``SIDE_EFFECTS``, each once); raises PolicyFilesError on an unknown one."""
    given = list(values)
    bad = [v for v in given if v not in SIDE_EFFECTS]
    if bad:
        raise PolicyFilesError(
            f"fail_closed takes side effects from {', '.join(SIDE_EFFECTS)}, not {bad[:3]}")
    return tuple(s for s in SIDE_EFFECTS if s in given)


def is_revision(value: str) -> bool:
    """Whether ``value`` has the shape of a revision id."""
    return bool(_REVISION.fullmatch(value))


@dataclass(frozen=True)
class Revision:
    """One published revision: its id, files, digest, settings, who published it and when."""

    revision: str
    index: int
    files: Mapping[str, str]
    digest: str
    fail_closed: tuple[str, ...]
    published_by: str
    published_at: str
    message: str | None
    checked_with: str | None

    def summary(self) -> dict[str, Any]:
        """Everything but the files' contents (their paths and sizes instead)."""
        return {
            "revision": self.revision, "record_index": self.index, "digest": self.digest,
            "fail_closed": list(self.fail_closed), "published_by": self.published_by,
            "published_at": self.published_at, "message": self.message,
            "checked_with": self.checked_with,
            "files": [{"path": p, "bytes": len(t.encode())} for p, t in self.files.items()],
        }


@dataclass(frozen=True)
class Activation:
    """One ``policy.activated`` record: which revision came into force, when, by whom, why."""

    revision: str
    previous: str | None
    index: int
    by: str
    at: str
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {"revision": self.revision, "previous": self.previous, "record_index": self.index,
                "activated_by": self.by, "activated_at": self.at, "reason": self.reason}


def identity(actor: Mapping[str, Any]) -> str:
    """Who acted: the key's (or person's) name and key id, or the CLI user."""
    name, key_id = actor.get("name"), actor.get("key_id")
    if key_id is None:
        return str(name or "unknown")
    return f"{name} (apikey:{key_id})" if name else f"apikey:{key_id}"


@dataclass
class PolicyFold:
    """A workspace's revisions and activations, folded from its policy records in ledger order."""

    workspace: str
    last_index: int = -1
    revisions: dict[str, Revision] = field(default_factory=dict)
    activations: list[Activation] = field(default_factory=list)

    def apply(self, records: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Fold ``(ledger index, record body)`` pairs, oldest first."""
        for index, rec in records:
            data = rec["data"]
            who = identity(rec["actor"])
            if rec["type"] == "policy.published":
                rev = str(data["revision"])
                self.revisions[rev] = Revision(
                    rev, index, dict(data["files"]), str(data["digest"]),
                    tuple(data.get("fail_closed", DEFAULT_FAIL_CLOSED)), who, str(rec["time"]),
                    data.get("message"), data.get("checked_with"))
            elif rec["type"] == "policy.activated":
                self.activations.append(Activation(
                    str(data["revision"]), data.get("previous"), index, who, str(rec["time"]),
                    data.get("reason")))
            self.last_index = max(self.last_index, index)

    @property
    def active(self) -> Revision | None:
        """The revision in force (None before the first activation)."""
        return self.revisions.get(self.activations[-1].revision) if self.activations else None

    @property
    def activation(self) -> Activation | None:
        """The activation that put the active revision in force."""
        return self.activations[-1] if self.activations else None

    def ever_active(self) -> set[str]:
        """Every revision that was ever in force."""
        return {a.revision for a in self.activations}

    def revision_json(self, rev: Revision, files: bool = False) -> dict[str, Any]:
        """A revision as the API and CLI show it: its summary, whether it is in force and ever
        was, and (``files``) its sources."""
        out = rev.summary()
        out["active"] = self.active is not None and self.active.revision == rev.revision
        out["ever_active"] = rev.revision in self.ever_active()
        if files:
            out["sources"] = dict(rev.files)
        return out

    def listing(self) -> dict[str, Any]:
        """Every revision (newest first) and every activation (newest first), as shown."""
        revs = sorted(self.revisions.values(), key=lambda r: r.index, reverse=True)
        return {"workspace": self.workspace, "active": self.active.revision if self.active else None,
                "revisions": [self.revision_json(r) for r in revs],
                "activations": [a.to_json() for a in reversed(self.activations)]}


class LedgerPolicies:
    """The policy revisions of any workspace of a ledger store, caught up on every read (one
    indexed query for the policy records written since the last read)."""

    def __init__(self, store: LedgerStore, page: int = 200) -> None:
        self.store = store
        self.page = page
        self._folds: dict[str, PolicyFold] = {}
        self._lock = threading.Lock()

    def fold(self, workspace: str) -> PolicyFold:
        """The workspace's fold, caught up with the ledger (do not change it)."""
        with self._lock:
            fold = self._folds.setdefault(workspace, PolicyFold(workspace))
            while True:
                rows = self.store.records_of_types(workspace, POLICY_TYPES, fold.last_index, self.page)
                fold.apply((r.index, loads(r.data)["record"]) for r in rows)
                if len(rows) < self.page:
                    return fold


def bundle_files(rev: Revision, workspace: str) -> dict[str, bytes]:
    """The files of a revision's OPA bundle by relative path: its own, and a ``.manifest`` naming
    the revision (so OPA reports it with every decision)."""
    manifest = {"revision": rev.revision, "metadata": {"workspace": workspace, "digest": rev.digest}}
    return {".manifest": dumps(manifest), **{p: t.encode() for p, t in rev.files.items()}}


def bundle_bytes(rev: Revision, workspace: str) -> bytes:
    """The OPA bundle of a revision (:func:`bundle_files`) as a gzipped tarball. Deterministic:
    no times, no owners."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in ((f"/{p}", c) for p, c in bundle_files(rev, workspace).items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def diff(old: Revision | None, new: Revision, context: int = 3) -> list[dict[str, Any]]:
    """Per file, how ``new`` differs from ``old`` (None: from nothing): status (added, removed,
    changed, same) and a unified diff of the lines."""
    before = dict(old.files) if old else {}
    out: list[dict[str, Any]] = []
    for path in sorted(set(before) | set(new.files)):
        a, b = before.get(path), new.files.get(path)
        status = "added" if a is None else "removed" if b is None else "same" if a == b else "changed"
        lines = list(difflib.unified_diff(
            (a or "").splitlines(), (b or "").splitlines(),
            fromfile=f"{old.revision if old else 'nothing'}/{path}", tofile=f"{new.revision}/{path}",
            lineterm="", n=context)) if status != "same" else []
        out.append({"path": path, "status": status, "diff": lines,
                    "added": sum(1 for x in lines if x.startswith("+") and not x.startswith("+++")),
                    "removed": sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))})
    return out
