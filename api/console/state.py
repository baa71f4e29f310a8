"""What the console keeps between requests: templates, sessions, the board, revert hooks."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse

from api.console.actions import RevertHook
from api.console.board import Board, diff_rows
from api.console.session import Sessions
from api.deps import Services
from domain.ledger import iso
from replay.store import ReplayReports
from tachograph.contract.canonical import dumps

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates


def money(value: Any) -> str:
    """Exact USD text of a Decimal (or decimal string), never through a float."""
    if value is None:
        return "—"
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    return f"${d:f}"


def json_text(value: Any) -> str:
    """Compact canonical JSON of a value, for showing args, results and diffs."""
    return dumps(value).decode()


def segment(value: Any) -> str:
    """A value as one URL path segment: every reserved character encoded, ``/`` included."""
    return quote(str(value), safe="")


def percent(value: Any) -> str:
    """A rate (0..1) as a percentage."""
    return "—" if value is None else f"{Decimal(str(value)) * 100:.1f}%"


@dataclass
class ConsoleState:
    """The console's long-lived parts, built once by ``mount_console`` (the templates on the first
    page: jinja2 is not imported before then, so ``tacho serve`` answers sooner)."""

    sessions: Sessions
    board: Board
    revert_hooks: Mapping[str, RevertHook]
    _templates: Jinja2Templates | None = field(default=None, repr=False)
    _templates_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def make_templates() -> Jinja2Templates:
        """Templates from the package (autoescaped), with the console's filters."""
        from fastapi.templating import Jinja2Templates  # imports jinja2: only for the first page

        templates = Jinja2Templates(directory=str(files("api.console") / "templates"))
        templates.env.filters.update(money=money, json=json_text, percent=percent, seg=segment, when=iso)
        templates.env.globals["change_diff"] = lambda c: diff_rows(c.before, c.after)
        return templates

    @property
    def templates(self) -> Jinja2Templates:
        """The console's templates, built on first use."""
        with self._templates_lock:
            if self._templates is None:
                self._templates = self.make_templates()
            return self._templates

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        """A page (or fragment) from a template."""
        resp = self.templates.TemplateResponse(request, name, context, status_code=status)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
        return resp

    login_secret: bytes = b""

    def __post_init__(self) -> None:
        self.login_secret = self.login_secret or secrets.token_bytes(32)

    def new_login_nonce(self) -> tuple[str, str]:
        """A fresh pre-session nonce (the cookie) and the sign-in form's token bound to it.

        The token is an HMAC of the nonce under a secret of this process: a page that manages to
        plant a cookie still cannot make the matching token.
        """
        nonce = secrets.token_urlsafe(32)
        return nonce, self.login_token(nonce)

    def login_token(self, nonce: str) -> str:
        """The sign-in form token that goes with a nonce."""
        return hmac.new(self.login_secret, b"login:" + nonce.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def replays(services: Services) -> ReplayReports:
        """The stored replay reports of the data dir."""
        return ReplayReports(services.settings.data_dir / "replays")
