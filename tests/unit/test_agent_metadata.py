"""The tachograph-agent distribution (agent/pyproject.toml) declares what the ``tachograph``
package imports, nothing of the platform, and the platform's version.

The real install into a fresh virtual environment is tests/e2e/test_agent_distribution.py; this
catches a drift (a new import in tachograph/ that the agent distribution does not bring) in
milliseconds, naming the module and the distribution to add.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import tachograph

ROOT = Path(__file__).resolve().parents[2]
PLATFORM_ONLY = {
    "duckdb",
    "fastapi",
    "eventsourcing",
    "matplotlib",
    "pyarrow",
    "uvicorn",
    "starlette",
    "tachograph",
}


def _project(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``kafka-python[crc32c]>=3`` → ``kafka-python``)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _third_party_imports() -> dict[str, str]:
    """Top-level module → a file importing it, for every non-stdlib import in tachograph/
    (module level and inside functions alike)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "tachograph").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("__future__", "tachograph"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


AGENT = _project(ROOT / "agent" / "pyproject.toml")
PLATFORM = _project(ROOT / "pyproject.toml")
REQUIRED = {_name(r) for r in AGENT["dependencies"]}  # type: ignore[attr-defined]
OPTIONAL = {_name(r) for rs in AGENT["optional-dependencies"].values() for r in rs}  # type: ignore[attr-defined]


def test_the_agent_distribution_has_the_platforms_version_and_python() -> None:
    assert AGENT["name"] == "tachograph-agent"
    assert AGENT["version"] == PLATFORM["version"] == tachograph.__version__
    assert AGENT["requires-python"] == PLATFORM["requires-python"]


def test_every_module_the_agent_package_imports_comes_with_the_agent_distribution() -> None:
    dists = packages_distributions()
    missing = []
    for module, where in sorted(_third_party_imports().items()):
        provided_by = {_name(d) for d in dists.get(module, [])}
        assert provided_by, f"{where} imports {module!r}, which no installed distribution provides"
        if not provided_by & (REQUIRED | OPTIONAL):
            missing.append(f"{module} (imported by {where}; add one of {sorted(provided_by)})")
    assert not missing, "agent/pyproject.toml does not bring: " + "; ".join(missing)


def test_opentelemetry_stays_optional_for_agent_services() -> None:
    assert "opentelemetry" in _third_party_imports()  # tachograph/trace.py joins a caller's trace
    assert "opentelemetry-api" in OPTIONAL and not any(
        d.startswith("opentelemetry") for d in REQUIRED
    )


def test_the_agent_distribution_brings_nothing_of_the_platform() -> None:
    assert not REQUIRED & PLATFORM_ONLY and not OPTIONAL & PLATFORM_ONLY


def test_the_platform_brings_every_dependency_of_the_agent_package_so_it_runs_there_too() -> None:
    platform = {_name(r) for r in PLATFORM["dependencies"]}  # type: ignore[attr-defined]
    assert REQUIRED <= platform, sorted(REQUIRED - platform)


def test_the_platform_distribution_contains_the_same_agent_package() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        found = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "tachograph*" in found  # one package, two distributions: install one of them, never both
