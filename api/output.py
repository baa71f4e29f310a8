"""Shared terminal output helpers: JSON for machines, rich for people."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from rich.console import Console


def console() -> Console:
    """A console on stdout (built on demand, never at import)."""
    return Console(highlight=False)


def err_console() -> Console:
    """A console on stderr for progress and warnings."""
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
