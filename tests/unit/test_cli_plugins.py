"""The ``tacho`` command imports only the module that registers the command asked for."""

from __future__ import annotations

import importlib
import subprocess
import sys

import typer
from typer.main import get_command
from typer.testing import CliRunner

from api.cli import PLUGINS, build_app, command_of


def _names(app: typer.Typer) -> set[str]:
    return set(get_command(app).commands)  # type: ignore[attr-defined]


def test_each_module_registers_exactly_the_commands_listed_for_it() -> None:
    for name, commands in PLUGINS.items():
        app = typer.Typer()
        app.callback()(lambda: None)
        importlib.import_module(name).register(app)
        assert _names(app) == set(commands), name


def test_a_command_builds_only_its_module_and_help_builds_every_one() -> None:
    every = set().union(*PLUGINS.values())
    assert _names(build_app()) == every
    assert _names(build_app("unknown-word")) == every
    assert _names(build_app("serve")) == {"serve", "apikey"}
    assert _names(build_app("policy")) == {"policy"}


def test_command_of_skips_options() -> None:
    assert command_of(["--help"]) is None
    assert command_of([]) is None
    assert command_of(["serve", "--port", "1"]) == "serve"
    assert command_of(["--json", "verify"]) == "verify"


def test_a_lone_command_still_runs_as_a_subcommand() -> None:
    """Typer runs an app with a single command as that command; the callback keeps it a group."""
    result = CliRunner().invoke(build_app("demo"), ["demo", "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: tacho demo" in result.output


def test_serve_does_not_import_other_command_modules() -> None:
    code = ("import sys; from api.cli import build_app; build_app('serve'); "
            "print(sorted(m for m in sys.modules if m.startswith('api.cli_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)  # a printed list of module names
    assert "api.cli_serve" in loaded
    assert not {"api.cli_replay", "api.cli_demo", "api.cli_projections", "api.cli_ingest"} & set(loaded)
