"""The console's policy pages: the revision in force, its history, every revision's files, diffs.

They read the same :class:`~api.policies.PolicyService` as ``GET /v1/policy/revisions``,
``/revisions/{rev}`` and ``/diff``, and need the same capability (``read_policy``: auditor,
engineer, admin). Like those endpoints and the kill-switch page, opening them is not recorded
as an audited read: they show the workspace's rules and who changed them, not a run's history or
evidence (the run timeline that links a decision to its revision is recorded).

Revision ids arrive in paths and query strings from anywhere: anything that is not the shape of
a revision id is refused with a 422 page before the ledger is asked, an unknown one is a 404 page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.auth import Capability
from api.console.routes import ConsoleRoute, _services, need, page, person
from api.console.session import Session
from api.policies import PolicyNotFoundError
from api.routes.errors import BadParameter
from ingest.policies import Activation, PolicyFold, Revision, is_revision

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

SHOWN_ID = 80
"""The most of an ill-formed id an error message repeats."""


class RevisionIdError(BadParameter):
    """A revision id in a console URL is not the shape of one (HTTP 422)."""


@dataclass(frozen=True)
class Period:
    """One activation of a revision, and when the next one ended it (None: still in force)."""

    activation: Activation
    until: str | None
    ended_by: str | None


def _checked(value: str, what: str) -> str:
    if not is_revision(value):
        raise RevisionIdError(
            f"{what} {value[:SHOWN_ID]!r} is not a revision id (a number, '-', then 12 hex digits, "
            "e.g. 3-5f2a9c1e0b7d)")
    return value


def _revision(fold: PolicyFold, value: str, what: str = "revision") -> Revision:
    rev = fold.revisions.get(_checked(value, what))
    if rev is None:
        raise PolicyNotFoundError(f"workspace {fold.workspace!r} has no policy revision {value!r}")
    return rev


def periods(fold: PolicyFold) -> list[Period]:
    """Every activation with the end of its time in force, oldest first."""
    acts = fold.activations
    return [Period(a, acts[i + 1].at if i + 1 < len(acts) else None,
                   acts[i + 1].revision if i + 1 < len(acts) else None)
            for i, a in enumerate(acts)]


def status(fold: PolicyFold, rev: Revision) -> str:
    """``in force``, ``was in force`` or ``never in force``."""
    if fold.active is not None and fold.active.revision == rev.revision:
        return "in force"
    return "was in force" if rev.revision in fold.ever_active() else "never in force"


def previous(fold: PolicyFold, rev: Revision) -> Revision | None:
    """The revision published just before ``rev`` (None for the first)."""
    earlier = [r for r in fold.revisions.values() if r.index < rev.index]
    return max(earlier, key=lambda r: r.index, default=None)


def _newest_first(fold: PolicyFold) -> list[Revision]:
    return sorted(fold.revisions.values(), key=lambda r: r.index, reverse=True)


def line_kind(line: str) -> str:
    """How a unified diff line is shown: meta (file names), hunk, add, del or context."""
    if line.startswith(("---", "+++")):
        return "meta"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "ctx")


def _fold(request: Request) -> tuple[Session, PolicyFold]:
    session = person(request)
    need(session, Capability.READ_POLICY)
    return session, _services(request).policies.fold(session.workspace)


@router.get("/policies")
def policies_page(request: Request) -> HTMLResponse:
    session, fold = _fold(request)
    revisions = _newest_first(fold)
    return page(request, session, "policies.html", fold=fold, active=fold.active,
                activation=fold.activation, history=list(reversed(periods(fold))),
                revisions=revisions, status=lambda r: status(fold, r),
                previous=lambda r: previous(fold, r),
                old=revisions[1] if len(revisions) > 1 else None, new=revisions[0] if revisions else None,
                fail_closed=list(fold.active.fail_closed) if fold.active else ["write"])


@router.get("/policies/diff")
def policy_diff_page(request: Request) -> HTMLResponse:
    """``?from=A&to=B`` (``from`` empty: from nothing); without ``to``, only the chooser."""
    session, fold = _fold(request)
    old_id = request.query_params.get("from") or None
    new_id = request.query_params.get("to") or None
    old = _revision(fold, old_id, "from") if old_id else None
    new = _revision(fold, new_id, "to") if new_id else None
    files: list[dict[str, Any]] = []
    if new is not None:
        files = _services(request).policies.diff(session.workspace, old_id, new.revision)
        for f in files:
            f["lines"] = [(line_kind(x), x) for x in f["diff"]]
    return page(request, session, "policy_diff.html", fold=fold, revisions=_newest_first(fold),
                old=old, new=new, files=files, status=lambda r: status(fold, r),
                changed=sum(1 for f in files if f["status"] != "same"))


@router.get("/policies/revisions/{revision:path}")
def policy_revision_page(request: Request, revision: str) -> HTMLResponse:
    session, fold = _fold(request)
    rev = _revision(fold, revision)
    return page(request, session, "policy_revision.html", rev=rev, state=status(fold, rev),
                before=previous(fold, rev), active=fold.active,
                periods=[p for p in reversed(periods(fold)) if p.activation.revision == rev.revision],
                files=[(path, text, len(text.encode()), len(text.splitlines()))
                       for path, text in rev.files.items()])


@router.get("/policies/{rest:path}")
def policy_no_page(request: Request, rest: str) -> HTMLResponse:
    """Anything else under /console/policies/ (e.g. a ``../`` a browser folded): a 404 page."""
    _fold(request)
    raise PolicyNotFoundError(f"there is no console page {request.url.path[:200]!r}; "
                              "revisions are at /console/policies/revisions/<revision>")
