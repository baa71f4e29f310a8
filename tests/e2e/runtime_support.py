"""The platform and agent processes of the runtime's end-to-end tests, sharing nothing but HTTP
or Kafka.

- ``http``: the agent posts its events to ``tacho serve`` (``POST /v1/events``) and reads halts
  and approvals from it.
- ``kafka``: the agent produces its events to a Kafka topic (Tansu, the harness's cheapest real
  broker), a ``tacho ingest`` worker process appends them to the ledger that ``tacho serve``
  reads; halts and approvals still come from ``tacho serve`` over HTTP (``api_url``).

Every platform process runs with ``TACHO_APPROVAL_DECISIONS=person``. The agent is
``runtime_agent.py`` in its own working and data directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.cli_support import ROOT, TACHO
from tests.harness import free_port

AGENT_SCRIPT = Path(__file__).with_name("runtime_agent.py")
WS = "acme"
PEOPLE = {"publisher": "", "approver": "Pat Approver", "admin": "Ari Admin", "auditor": "Ada Auditor"}
PLATFORM_ENV = {"TACHO_APPROVAL_DECISIONS": "person", "TACHO_CHECKPOINT_INTERVAL_S": "0.5"}


def segment(value: str) -> str:
    """An id as one URL path segment (``/`` encoded too)."""
    return quote(value, safe="")


def _platform_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TACHO_")}
    return {**env, **PLATFORM_ENV, "TACHO_DATA_DIR": str(data_dir), "COLUMNS": "200"}


def tacho_run(data_dir: Path, *args: str, check: bool = True,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tacho ARGS`` on the platform's data directory, to completion (``env`` added to the
    platform's environment, e.g. ``TACHO_API_KEY``)."""
    proc = subprocess.run([*TACHO, *args], env={**_platform_env(data_dir), **(env or {})}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"tacho {args} exited {proc.returncode}: {proc.stdout}\n{proc.stderr}")
    return proc


def _start(data_dir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([*TACHO, *args], env=_platform_env(data_dir), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM (by pid), then wait; the process must end cleanly."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"{proc.args!r} did not stop on SIGTERM: {log.read_text()[-2000:]}") from None
    text = log.read_text(errors="replace")
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in text, text[-3000:]


@dataclass
class Platform:
    """``tacho serve`` (and for Kafka ``tacho ingest``) on one data directory, with keys."""

    transport: str
    data_dir: Path
    url: str = ""
    agent_url: str = ""  # where the agent sends its events
    secrets: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)  # stopped with the platform
    forged: list[tuple[str, str]] = field(default_factory=list)  # (run_id, event_id) posted forgeries

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    def identity(self, role: str) -> str:
        """The ``by`` the platform writes for the role's person."""
        return f"{PEOPLE[role]} (apikey:{self.key_ids[role]})"

    def get(self, path: str, role: str = "auditor", **params: Any) -> Any:
        r = httpx.get(self.url + path, params=params, headers=self.auth(role), timeout=30)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's stored events, in ledger order."""
        r = httpx.get(f"{self.url}/v1/runs/{segment(run_id)}/events", headers=self.auth("auditor"))
        if r.status_code == 404:
            return []
        assert r.status_code == 200, r.text
        return [e["event"] for e in r.json()["entries"]]

    def settled_events(self, run_id: str, quiet_s: float = 1.5, timeout: float = 30) -> list[dict[str, Any]]:
        """The run's events once no new one arrived for ``quiet_s`` (Kafka: the worker caught up)."""
        deadline = time.monotonic() + timeout
        seen, since = self.events(run_id), time.monotonic()
        while time.monotonic() - since < quiet_s:
            assert time.monotonic() < deadline, f"run {run_id} kept changing for {timeout}s"
            time.sleep(0.2)
            now = self.events(run_id)
            if len(now) != len(seen):
                seen, since = now, time.monotonic()
        return seen

    def completed(self, run_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """The run's events once its ``run.completed`` is stored."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events(run_id)
            if events and events[-1]["type"] == "run.completed":
                return events
            assert time.monotonic() < deadline, f"run {run_id} never completed in the ledger: {events}"
            time.sleep(0.1)

    def approval(self, approval_id: str, role: str = "auditor") -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/v1/approvals/{segment(approval_id)}", role)
        return result

    def pending_approval(self, run_id: str, timeout: float = 30) -> dict[str, Any]:
        """The run's pending approval, once the platform shows it."""
        deadline = time.monotonic() + timeout
        while True:
            queue = self.get("/v1/approvals", "approver", status="pending")["approvals"]
            mine: list[dict[str, Any]] = [a for a in queue if a["run_id"] == run_id]
            if mine:
                return mine[0]
            assert time.monotonic() < deadline, f"no pending approval of {run_id} within {timeout}s"
            time.sleep(0.1)

    def quarantine(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("/v1/quarantine", limit=500)["items"]
        return items

    def decision_record(self, index: int) -> dict[str, Any]:
        """The ``approval.decision`` platform record at a ledger index."""
        page = self.get("/v1/audit-log", type="approval.decision", limit=500)["records"]
        found = [r for r in page if r["index"] == index]
        assert found, f"no approval.decision record at index {index}: {page}"
        record: dict[str, Any] = found[0]["record"]
        return record

    def stop(self) -> None:
        """Kill agents still running, then stop every platform process (ingest first), by pid."""
        for agent in self.agents:
            agent.stop()
        while self.procs:
            proc, log = self.procs.pop()
            _stop(proc, log)


def start_platform(transport: str, data_dir: Path, bootstrap: str | None = None,
                   topic: str | None = None) -> Platform:
    """Keys per role, ``tacho serve``, and for Kafka ``tacho ingest`` on the same data dir."""
    platform = Platform(transport, data_dir)
    tacho_run(data_dir, "keys")
    for role, name in PEOPLE.items():
        args = ["apikey", "create", "--workspace", WS, "--role", role, "--json"]
        out = json.loads(tacho_run(data_dir, *args, *(["--label", name] if name else [])).stdout)
        platform.secrets[role], platform.key_ids[role] = out["secret"], out["key"]["id"]
    port = free_port()
    log = data_dir.parent / "serve.log"
    platform.procs.append((_start(data_dir, log, "serve", "--port", str(port), "--log-level", "warning"), log))
    platform.url = f"http://127.0.0.1:{port}"
    _wait_healthy(platform, log)
    if transport == "http":
        platform.agent_url = platform.url
    else:
        assert bootstrap and topic
        log = data_dir.parent / "ingest.log"
        worker = _start(data_dir, log, "ingest", "--bootstrap", bootstrap, "--topic", topic, "--assign", "--json")
        platform.procs.append((worker, log))
        platform.agent_url = f"kafka://{bootstrap}/{topic}"
    return platform


def _wait_healthy(platform: Platform, log: Path) -> None:
    proc = platform.procs[-1][0]
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(platform.url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"tacho serve did not start: {log.read_text()}"
        time.sleep(0.1)


class Agent:
    """``runtime_agent.py`` as an OS process of its own (own cwd and data dir), its output read
    line by line as it comes; ``env`` adds to its environment (e.g. ``TACHO_OPA_URL``)."""

    def __init__(self, platform: Platform, home: Path, prefix: str, *scenarios: str,
                 options: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        (home / "data").mkdir(exist_ok=True)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TACHO_")}
        environ.update(PYTHONPATH=str(ROOT), TACHO_DATA_DIR=str(home / "data"), **(env or {}))
        args = [sys.executable, str(AGENT_SCRIPT), platform.agent_url, "--key", platform.secrets["publisher"],
                "--workspace", WS, "--prefix", prefix]
        if platform.transport == "kafka":
            args += ["--api-url", platform.url]
        self.prefix = prefix
        self.stderr_path = home / "stderr.log"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*args, *options, *scenarios], cwd=home, env=environ, stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        platform.agents.append(self)
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, name=f"agent-{prefix}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def run_id(self, scenario: str) -> str:
        return f"{self.prefix}-{scenario}"

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30) -> dict[str, Any]:
        """The first line that ``matches`` (waiting for it up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((x for x in self.lines if matches(x)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(f"the agent never printed {what} ({'ended' if self._eof else 'timeout'}): "
                                         f"{self.lines[-5:]}\n{self.stderr()}")
                self._cond.wait(left)

    def result(self, scenario: str, timeout: float = 60) -> dict[str, Any]:
        """The run's result line."""
        return self.wait_for(lambda x: x["kind"] == "result" and x["scenario"] == scenario,
                             f"the result of {scenario}", timeout)

    def events_printed(self, run_id: str) -> list[dict[str, Any]]:
        with self._cond:
            return [x for x in self.lines if x["kind"] == "event" and x["run_id"] == run_id]

    def finish(self, timeout: float = 60) -> None:
        """Wait for a clean exit."""
        assert self.proc.wait(timeout=timeout) == 0, self.stderr()
        self._reader.join(10)

    def kill(self) -> None:
        """Crash the agent: SIGKILL (by pid), no cleanup; then read what it printed before."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(10)

    def stop(self) -> None:
        """Whatever state it is in (fixture teardown): kill it if still running."""
        if self.proc.poll() is None:
            self.kill()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]
