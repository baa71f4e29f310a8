"""The ``tacho`` command line: the composition root for people at a terminal.

Core ledger commands live in :mod:`api.cli_ledger`; other areas register their own commands
from their ``api/cli_*.py`` module (each exposes ``register(app)``).

A command imports only the module that registers it (``tacho serve`` does not pay for the
replay, projection and demo commands' imports: about half a second of its start); help, an
unknown command and no command import them all.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import typer
from pydantic import ValidationError

from domain.errors import TachographError

PLUGINS: dict[str, tuple[str, ...]] = {
    "api.cli_ledger": ("import", "verify", "checkpoint", "evidence", "verify-evidence", "generate",
                       "schema", "keys", "quarantine"),
    "api.cli_ingest": ("ingest", "dev-broker"),
    "api.cli_projections": ("project", "export", "report"),
    "api.cli_replay": ("replay",),
    "api.cli_serve": ("serve", "apikey"),
    "api.cli_demo": ("demo",),
    "api.cli_policy": ("policy",),
}
"""Each command module and the top-level commands it registers (a test holds them equal)."""


def command_of(argv: list[str]) -> str | None:
    """The top-level command ``argv`` (without the program name) asks for: its first word that is
    not an option (``tacho`` itself has no options that take a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_app(command: str | None = None) -> typer.Typer:
    """Assemble the CLI: from the one module that registers ``command``, or from every command
    module that is present when ``command`` is None or no module registers it."""
    app = typer.Typer(
        name="tacho",
        help="Tachograph: the flight recorder for AI agents.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    # with a callback the app stays a group even when one module registers a single command
    # (typer would otherwise run that command as the program itself)
    app.callback()(_group)
    owners = [name for name, commands in PLUGINS.items() if command in commands]
    for name in owners or PLUGINS:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(app)
    return app


def _group() -> None:
    """Tachograph: the flight recorder for AI agents."""


def make_private() -> None:
    """Every file this process creates is its owner's alone, and so is the data directory."""
    from api.bootstrap import PRIVATE_UMASK, make_data_dir_private
    from api.settings import Settings

    os.umask(PRIVATE_UMASK)
    try:
        data_dir = Settings().data_dir
    except ValidationError:
        return  # the command that reads the settings says what is wrong with them
    make_data_dir_private(data_dir)


def main() -> None:
    """Entry point of the ``tacho`` script."""
    app = build_app(command_of(sys.argv[1:]))
    try:
        make_private()
        app()
    except TachographError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
