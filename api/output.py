"""Shared terminal output helpers: JSON for machines, rich for people.

Light to import (rich is loaded by the first console built): ``tacho serve`` imports it too.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

if TYPE_CHECKING:
    from rich.console import Console

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for machines")]
"""The ``--json`` option of a command that can print JSON for machines."""


def console() -> Console:
    """A console on stdout (built on demand, never at import)."""
    from rich.console import Console

    return Console(highlight=False)


def err_console() -> Console:
    """A console on stderr for progress and warnings."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _default(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def print_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(
        orjson.dumps(value, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
        + "\n"
    )
    sys.stdout.flush()
