"""The ``tacho`` command line: the composition root for people at a terminal.

Core ledger commands live in :mod:`api.cli_ledger`; other areas register their own commands
from their ``api/cli_*.py`` module (each exposes ``register(app)``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import typer
from pydantic import ValidationError

from domain.errors import TachographError

PLUGINS = (
    "api.cli_ledger",
    "api.cli_ingest",
    "api.cli_projections",
    "api.cli_replay",
    "api.cli_serve",
    "api.cli_demo",
    "api.cli_policy",
)


def build_app() -> typer.Typer:
    """Assemble the CLI from every command module that is present."""
    app = typer.Typer(
        name="tacho",
        help="Tachograph: the flight recorder for AI agents.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in PLUGINS:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(app)
    return app


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
    app = build_app()
    try:
        make_private()
        app()
    except TachographError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
