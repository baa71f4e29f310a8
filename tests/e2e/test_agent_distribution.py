"""The agent side installs on its own: the ``tachograph-agent`` wheel (built from ``agent/``) goes
into a fresh virtual environment with its dependencies from PyPI, and an example agent run there
(its own directory, no PYTHONPATH, no platform code) records its runs in ``tacho serve`` running
from the platform's environment, over HTTP only.

The environment is cached under ``.cache/agent-venv/<key>``, keyed by the wheel's contents and the
Python version, so a rerun with unchanged sources reuses it and any change to ``tachograph/`` or
``agent/`` builds a new one. The wheel itself is built on every run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli_support import ROOT, start_tacho, tacho
from tests.harness import CACHE_DIR, free_port

VENV_CACHE = CACHE_DIR.resolve() / "agent-venv"  # .cache may be a link to a shared one
KEEP_VENVS = 3  # other worktrees share .cache: keep a few recent environments, not just ours
PRUNE_AFTER_S = 24 * 3600
PLATFORM_NAMES = (
    "api",
    "domain",
    "ingest",
    "replay",
    "projections",
    "examples",
    "duckdb",
    "fastapi",
    "eventsourcing",
    "matplotlib",
    "pyarrow",
    "uvicorn",
    "starlette",
)
WS = "acme"
TICKETS = 5
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def _run(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _bare_env() -> dict[str, str]:
    """The environment of a process in the fresh venv: nothing that would add the repository."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _source_files() -> dict[str, bytes]:
    """The repository's tachograph package: wheel path → bytes (no byte code)."""
    src = ROOT / "tachograph"
    return {
        f"tachograph/{p.relative_to(src).as_posix()}": p.read_bytes()
        for p in sorted(src.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def agent_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps ./agent`` (build isolation: hatchling from PyPI)."""
    out = tmp_path_factory.mktemp("agent-wheel")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            str(ROOT / "agent"),
            "-w",
            str(out),
        ],
        cwd=ROOT,
    )
    wheels = list(out.glob("tachograph_agent-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _wheel_key(wheel: Path) -> str:
    digest = hashlib.sha256(f"{sys.version}\0{sys.platform}\0".encode())
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
    return digest.hexdigest()[:20]


def _build_venv(target: Path, wheel: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    # run from the platform's venv, `-m venv` makes an environment of its base interpreter,
    # without the platform's site-packages
    _run([sys.executable, "-m", "venv", str(target)], cwd=target.parent)
    _run(
        [
            str(target / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--prefer-binary",
            str(wheel),
        ],
        cwd=target.parent,
        env=_bare_env(),
    )


def _prune(keep: Path) -> None:
    others = sorted(
        (p for p in VENV_CACHE.iterdir() if p.is_dir() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in others[KEEP_VENVS - 1 :]:
        if time.time() - old.stat().st_mtime > PRUNE_AFTER_S:  # not in use by a running test
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="module")
def agent_python(agent_wheel: Path) -> Path:
    """The python of a fresh venv with the agent wheel and its dependencies installed from PyPI."""
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    target = VENV_CACHE / _wheel_key(agent_wheel)
    ready = target / ".ready"
    with (VENV_CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building the same one
        if not ready.is_file():
            _build_venv(target, agent_wheel)
            ready.write_text(agent_wheel.name + "\n")
        os.utime(target)
        _prune(target)
    return target / "bin" / "python"


def _in_venv(python: Path, cwd: Path, code: str, *args: str) -> Any:
    """Run ``code`` with the venv's python in ``cwd``; its one line of JSON output, parsed."""
    script = cwd / "probe.py"
    script.write_text(textwrap.dedent(code))
    return json.loads(
        _run([str(python), str(script), *args], cwd=cwd, env=_bare_env(), timeout=300).stdout
    )


def test_the_wheel_holds_the_tachograph_package_as_it_is_in_the_repository_and_nothing_else(
    agent_wheel: Path,
) -> None:
    with zipfile.ZipFile(agent_wheel) as z:
        names = z.namelist()
        files = {n: z.read(n) for n in names if not n.startswith("tachograph_agent-")}
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names} == {"tachograph", "tachograph_agent-0.1.0.dist-info"}
    assert files == _source_files()
    requires = sorted(
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    )
    assert not [
        r
        for r in requires
        if re.match(r"(?i)(duckdb|fastapi|eventsourcing|matplotlib|pyarrow|uvicorn)", r)
    ]
    assert "Requires-Python: >=3.11" in metadata.splitlines()


def test_the_fresh_environment_has_tachograph_and_none_of_the_platforms_names(
    agent_python: Path, tmp_path: Path
) -> None:
    found = _in_venv(
        agent_python,
        tmp_path,
        """
        import importlib, importlib.metadata, importlib.util, json, pkgutil, sys
        names = sys.argv[1:]
        import tachograph
        modules = [m.name for m in pkgutil.walk_packages(tachograph.__path__, "tachograph.")]
        for name in modules:  # every module of the package imports without the platform
            importlib.import_module(name)
        dist = importlib.metadata.distribution("tachograph-agent")
        try:
            tachograph.connect("embedded:" + sys.prefix)
            embedded = "connected"
        except tachograph.ConfigError as e:
            embedded = str(e)
        print(json.dumps({
            "embedded": embedded,
            "importable": {n: importlib.util.find_spec(n) is not None for n in ["tachograph", *names]},
            "modules": modules, "loaded": sorted({m.split(".")[0] for m in sys.modules}),
            "top_level": sorted({f.parts[0] for f in dist.files}),
            "file": tachograph.__file__, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
            "platform_dist": [d.metadata["Name"] for d in importlib.metadata.distributions()
                              if d.metadata["Name"] == "tachograph"],
        }))
    """,
        *PLATFORM_NAMES,
    )
    assert found["importable"] == {"tachograph": True, **dict.fromkeys(PLATFORM_NAMES, False)}
    assert (
        "tachograph.runtime" in found["modules"]
        and "tachograph.contract.events" in found["modules"]
    )
    assert not set(found["loaded"]) & set(PLATFORM_NAMES), found["loaded"]
    assert found["top_level"] == ["tachograph", "tachograph_agent-0.1.0.dist-info"]
    assert "the embedded transport comes with the platform" in found["embedded"]
    assert found["file"].startswith(found["prefix"]) and found["prefix"] != sys.prefix
    assert found["base_prefix"] == sys.base_prefix and found["platform_dist"] == []
    installed = Path(found["file"]).parent
    assert {
        f"tachograph/{p}": (installed / p).read_bytes()
        for p in (k.removeprefix("tachograph/") for k in _source_files())
    } == _source_files()


@dataclass
class Served:
    """``tacho serve`` from the platform's environment, with a publisher and an auditor key."""

    url: str
    data_dir: Path
    secrets: dict[str, str]

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(
            self.url + path,
            params=params,
            headers={"Authorization": f"Bearer {self.secrets['auditor']}"},
        )
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("TACHO_APPROVAL_DECISIONS", "person")
    monkeypatch.setenv("TACHO_CHECKPOINT_INTERVAL_S", "0.5")
    data_dir = tmp_path / "platform"
    tacho(data_dir, "keys")
    secrets = {}
    for role in ("publisher", "auditor"):
        out = tacho(
            data_dir, "apikey", "create", "--workspace", WS, "--role", role, "--json"
        ).stdout
        secrets[role] = json.loads(out)["secret"]
    port = free_port()
    proc = start_tacho(data_dir, "serve", "--port", str(port), "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "tacho serve did not start"
        time.sleep(0.1)
    yield Served(url, data_dir, secrets)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -15) and "Traceback" not in err, err


RUNNER = """
    \"\"\"An agent service's own script: run tickets through its triage agent, recorded over HTTP.\"\"\"
    import json
    import sys

    import tachograph
    import triage_agent

    url, key, workspace, n = sys.argv[1:5]
    # amounts up to 90: no refund waits for a person's approval in this test
    tickets = [{**t, "amount": str(min(int(t["amount"]), 90))} for t in triage_agent.inputs(int(n), "dist")]
    with tachograph.connect(url, api_key=key, workspace=workspace) as rt:
        results = [rt.run(triage_agent.triage, t, budget=tachograph.Budget(deadline_s=60)) for t in tickets]
    print(json.dumps({
        "runs": [{"run_id": r.run_id, "outcome": r.outcome, "error": r.error, "events": len(r.events)}
                 for r in results],
        "loaded": sorted({name.split(".")[0] for name in sys.modules}),
        "path": sys.path,
    }))
"""


def test_an_example_agent_in_the_fresh_environment_records_its_runs_in_tacho_serve(
    agent_python: Path, served: Served, tmp_path: Path
) -> None:
    service = tmp_path / "agent-service"
    service.mkdir()
    shutil.copy(ROOT / "examples" / "triage.py", service / "triage_agent.py")
    (service / "run_tickets.py").write_text(textwrap.dedent(RUNNER))
    proc = _run(
        [
            str(agent_python),
            "run_tickets.py",
            served.url,
            served.secrets["publisher"],
            WS,
            str(TICKETS),
        ],
        cwd=service,
        env=_bare_env(),
        timeout=300,
    )
    report = json.loads(proc.stdout)
    assert str(ROOT) not in report["path"]
    assert not set(report["loaded"]) & {*PLATFORM_NAMES, "opentelemetry"}, report["loaded"]
    assert "tachograph" in report["loaded"] and "triage_agent" in report["loaded"]
    runs = report["runs"]
    assert len(runs) == TICKETS and all(
        r["outcome"] == "succeeded" and r["error"] is None for r in runs
    ), runs

    trace_ids = set()
    for run in runs:
        events = [e["event"] for e in served.get(f"/v1/runs/{run['run_id']}/events")["entries"]]
        assert len(events) == run["events"] and [e["seq"] for e in events] == list(
            range(len(events))
        )
        started = events[0]
        assert started["type"] == "run.started" and events[-1]["type"] == "run.completed"
        assert started["data"]["entry_point"] == "triage_agent:triage"
        assert started["agent"] == {"id": "triage-agent", "version": "3.0.0"}
        assert started["data"]["workflow"] == "ticket-triage"
        (trace_id,) = {e["trace_id"] for e in events}  # one trace per run, on every event
        assert TRACE_ID.match(trace_id) and trace_id != "0" * 32
        trace_ids.add(trace_id)
    assert len(trace_ids) == TICKETS  # no OpenTelemetry in the agent's environment: one per run

    listed = _listed_runs(served, {r["run_id"] for r in runs})
    assert {r["outcome"] for r in listed} == {"succeeded"}
    verdict = json.loads(tacho(served.data_dir, "verify", "--json", "--allow-unsigned-tail").stdout)
    assert verdict["ok"], verdict
    assert served.get("/v1/quarantine")["items"] == []


def _listed_runs(served: Served, run_ids: set[str]) -> list[dict[str, Any]]:
    """The runs as ``GET /v1/runs`` lists them, once the projection has all of them."""
    deadline = time.monotonic() + 30
    while True:
        listed = [
            r
            for r in served.get("/v1/runs", workflow="ticket-triage", limit=100)["runs"]
            if r["run_id"] in run_ids and r.get("outcome") not in (None, "running")
        ]
        if len(listed) == len(run_ids):
            return listed
        assert time.monotonic() < deadline, (
            f"GET /v1/runs lists {listed}, not all of {sorted(run_ids)}"
        )
        time.sleep(0.2)
