"""docker-compose.yml run natively: each tachograph service's own ``command`` and ``environment``
as OS processes of the ``tacho`` entry point, the way Compose would wire them.

- Service host names become local addresses: ``kafka:9092`` the harness's Apache Kafka,
  ``postgres:5432`` a PostgreSQL server of the harness set up as the ``postgres`` image's entry
  point would from the service's environment (user, database, password from the secret file;
  password authentication required for that user).
- Named volumes become temp directories shared by the services that mount them; each replica's
  own container filesystem (a path no volume covers, such as ``/data`` of an ingest worker) is a
  directory of its own; ``secrets`` are files under ``/run/secrets/<name>``.
- Container paths in the environment and command are rewritten to those directories; every
  ``--*port`` option gets a free local port (published ones are remembered), ``--host 0.0.0.0``
  becomes 127.0.0.1.
- ``${VAR:-default}`` is interpolated from the test's environment, as Compose does from the shell.
- Services start in ``depends_on`` order; a dependency with ``service_completed_successfully``
  runs to completion first and must exit 0; a ``healthcheck`` (exec form) is run natively until
  it passes.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cli_support import ROOT, TACHO
from tests.harness import free_port

COMPOSE_FILE = ROOT / "docker-compose.yml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as Compose reads it (YAML merge keys resolved)."""
    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def interpolate(value: str, env: dict[str, str]) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from ``env`` (Compose's interpolation, the forms we use)."""
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def tacho_service_names(doc: dict[str, Any]) -> list[str]:
    """The services built from this repository's Dockerfile, in ``depends_on`` order."""
    ordered: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        assert name not in seen, f"dependency cycle through {name}"
        for dep in doc["services"][name].get("depends_on", {}):
            visit(dep, (*seen, name))
        if name not in ordered:
            ordered.append(name)

    for name in doc["services"]:
        visit(name)
    return [n for n in ordered if "build" in doc["services"][n]]


@dataclass
class Process:
    """One replica of a service, started natively."""

    service: str
    replica: int
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[int, int]  # container port -> local port

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class NativeStack:
    """The compose file's services as processes, over ``root`` (a temp directory)."""

    doc: dict[str, Any]
    root: Path
    hosts: dict[str, str] = field(default_factory=dict)  # "service:port" -> "127.0.0.1:port"
    env: dict[str, str] = field(default_factory=dict)  # the "shell" Compose interpolates from
    processes: list[Process] = field(default_factory=list)

    def volume(self, name: str) -> Path:
        assert name in self.doc["volumes"], f"no volume {name} in the compose file"
        path = self.root / "volumes" / name
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def secret(self, name: str) -> Path:
        """The secret's file, where Compose finds it (``file:`` relative to the project)."""
        return self.root / "project" / self.doc["secrets"][name]["file"]

    def write_secrets(self) -> None:
        for name in self.doc["secrets"]:
            path = self.secret(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24) + "\n")  # as `openssl rand` > file would

    # -- one service -----------------------------------------------------------------------
    def mounts(self, service: str, replica: int) -> list[tuple[str, Path]]:
        """(container path, local path), longest container path first."""
        spec = self.doc["services"][service]
        out = []
        for mount in spec.get("volumes", []):
            source, target = mount.split(":")[:2]
            out.append((target, self.volume(source)))
        for name in spec.get("secrets", []):
            out.append((f"/run/secrets/{name}", self.secret(name)))
        layer = self.root / "containers" / f"{service}-{replica}"
        for path in ("/data", "/keys", "/analytics", "/tmp"):  # the image's own directories
            if not any(t == path for t, _ in out):
                (layer / path.strip("/")).mkdir(parents=True, exist_ok=True, mode=0o700)
                out.append((path, layer / path.strip("/")))
        return sorted(out, key=lambda m: -len(m[0]))

    def rewrite(self, text: str, mounts: list[tuple[str, Path]], ports: dict[int, int]) -> str:
        """A value of the service's command or environment as seen from this machine."""
        for name, local in self.hosts.items():
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", local, text)
        for container, local in ports.items():
            text = re.sub(rf"(?<=127\.0\.0\.1:){container}\b", str(local), text)
        for target, local in mounts:
            if text == target or text.startswith(target + "/"):
                return str(local) + text[len(target):]
        return text

    def command(self, service: str, replica: int) -> tuple[list[str], dict[str, str], Path, dict[int, int]]:
        """The argv, environment, working directory and port map of one replica."""
        spec = self.doc["services"][service]
        mounts = self.mounts(service, replica)
        words = [interpolate(str(w), self.env) for w in spec["command"]]
        ports: dict[int, int] = {}
        argv = []
        for i, word in enumerate(words):
            if i and words[i - 1].endswith("port") and words[i - 1].startswith("--"):
                ports[int(word)] = free_port()
                word = str(ports[int(word)])
            elif i and words[i - 1] == "--host" and word == "0.0.0.0":
                word = "127.0.0.1"
            argv.append(self.rewrite(word, mounts, ports))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TACHO_", "PG"))}
        env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever the venv was installed from
        for name, value in (spec.get("environment") or {}).items():
            env[name] = self.rewrite(interpolate(str(value), self.env), mounts, ports)
        workdir = dict(mounts)["/data"]  # the image's WORKDIR
        return [*TACHO, *argv], env, workdir, ports  # TACHO: the `tacho` entry point, api.cli:main

    def run_once(self, service: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A one-shot service, to completion (its exit code is the caller's to check)."""
        argv, env, cwd, _ = self.command(service, 0)
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def start(self, service: str) -> list[Process]:
        """Every replica of ``service`` (``deploy.replicas``), in the background."""
        spec = self.doc["services"][service]
        started = []
        for replica in range(int(spec.get("deploy", {}).get("replicas", 1))):
            argv, env, cwd, ports = self.command(service, replica)
            log = self.root / "logs" / f"{service}-{replica}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            started.append(Process(service, replica, proc, log, ports))
        self.processes.extend(started)
        return started

    def wait_healthy(self, service: str, timeout: float = 60) -> None:
        """Run the service's healthcheck (exec form, ``python`` is ours) until it passes."""
        test = self.doc["services"][service]["healthcheck"]["test"]
        assert test[0] == "CMD", "healthchecks in exec form"
        for p in (p for p in self.processes if p.service == service):
            argv = [sys.executable if w == "python" else self.rewrite(w, [], p.ports) for w in test[1:]]
            deadline = time.monotonic() + timeout
            while subprocess.run(argv, capture_output=True, timeout=30).returncode != 0:
                assert p.proc.poll() is None, f"{service} exited {p.proc.returncode}:\n{p.text()[-3000:]}"
                assert time.monotonic() < deadline, f"{service} not healthy in {timeout}s:\n{p.text()[-3000:]}"
                time.sleep(0.3)

    def published(self, service: str, container_port: int) -> int:
        """The local port of a service's published container port (its first replica)."""
        spec = self.doc["services"][service]
        assert any(str(p).endswith(f":{container_port}") for p in spec.get("ports", [])), (
            f"{service} publishes no port {container_port}")
        return next(p for p in self.processes if p.service == service).ports[container_port]

    def alive(self) -> None:
        """Every long-running service is still up."""
        for p in self.processes:
            assert p.proc.poll() is None, f"{p.service}-{p.replica} exited {p.proc.returncode}:\n{p.text()[-3000:]}"

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every process (as `docker compose stop`), then wait; their exit codes."""
        for p in self.processes:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        codes = {}
        for p in self.processes:
            try:
                p.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(timeout=10)
            codes[f"{p.service}-{p.replica}"] = p.proc.returncode
        return codes


def postgres_like_the_image(server: Any, service: dict[str, Any], stack: NativeStack) -> None:
    """Create the user and database the ``postgres`` image would from the service's environment
    (``POSTGRES_USER``, ``POSTGRES_PASSWORD_FILE``, ``POSTGRES_DB``), and require that user's
    password on TCP (scram-sha-256), as the image does."""
    import psycopg
    from psycopg import sql

    env = service["environment"]
    secret = env["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert secret in service["secrets"], "the password file is the service's secret"
    password = stack.secret(secret).read_text().rstrip("\n")  # the entry point's $(< file)
    user, db = env["POSTGRES_USER"], env["POSTGRES_DB"]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(user)))
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
    rules = hba.read_text()
    hba.write_text(f"host all {user} 127.0.0.1/32 scram-sha-256\n" + rules)  # first match wins
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
