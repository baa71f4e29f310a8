"""docker-compose.yml works as written: every tachograph service started natively with its own
command and environment (tests/e2e/compose_support.py) against real Apache Kafka and PostgreSQL;
agents publish runs through the runtime over Kafka; the API serves them and their analytics; the
ledger verifies."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli_support import ROOT, TACHO
from tests.e2e.compose_support import (
    NativeStack,
    load_compose,
    postgres_like_the_image,
    tacho_service_names,
)
from tests.harness.postgres import PostgresServer, postgres_unavailable_reason

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

AGENT = ROOT / "tests" / "e2e" / "runtime_agent.py"
WS = "acme"


@pytest.fixture
def compose_postgres():
    """A PostgreSQL server of the compose stack's own (its auth rules are changed)."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.fail(f"postgres unavailable: {reason}")
    with PostgresServer() as server:
        yield server


def _eventually(what: str, probe: Any, timeout: float = 60, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")


def _apikey(stack: NativeStack, role: str) -> str:
    """`docker compose exec api tacho apikey create ...`: the API service's environment."""
    _, env, cwd, _ = stack.command("api", 0)
    argv = [*TACHO, "apikey", "create", "--workspace", WS, "--role", role, "--json"]
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["secret"])


def test_the_compose_services_run_as_written(apache_kafka, compose_postgres, tmp_path: Path) -> None:
    doc = load_compose()
    stack = NativeStack(doc, tmp_path, env={"TACHO_WITNESSES": ""})
    stack.write_secrets()
    postgres_like_the_image(compose_postgres, doc["services"]["postgres"], stack)
    stack.hosts = {"kafka:9092": apache_kafka.bootstrap, "postgres:5432": f"127.0.0.1:{compose_postgres.port}"}
    topic = doc["services"]["ingest"]["command"][doc["services"]["ingest"]["command"].index("--topic") + 1]
    partitions = int(doc["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"])
    apache_kafka.create_topic(topic, partitions)  # what the broker's auto-creation would make

    services = tacho_service_names(doc)
    assert services == ["keys", "ingest", "projector", "api"]
    try:
        for name in services:
            conditions = doc["services"][name].get("depends_on", {})
            for dep, cond in conditions.items():
                if cond["condition"] == "service_healthy" and dep in services:
                    stack.wait_healthy(dep)
            if name == "keys":  # one-shot: ingest, projector and api wait for its success
                done = stack.run_once("keys")
                assert done.returncode == 0, done.stderr
                vkey = done.stdout.strip()
                assert vkey.count("+") >= 2, done.stdout  # the verifier key, alone on stdout
            else:
                stack.start(name)
        stack.wait_healthy("api")
        key_file = stack.volume("signing-key") / "ledger.skey"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert len([p for p in stack.processes if p.service == "ingest"]) == 3

        api = f"http://127.0.0.1:{stack.published('api', 8080)}"
        publisher, auditor, analyst = (_apikey(stack, r) for r in ("publisher", "auditor", "analyst"))
        agents = [subprocess.run(
            [sys.executable, str(AGENT), f"kafka://{apache_kafka.bootstrap}/{topic}", "--key", publisher,
             "--workspace", WS, "--api-url", api, "--prefix", prefix, "short"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("TACHO_")}, "PYTHONPATH": str(ROOT)},
        ) for prefix in ("compose-a", "compose-b")]
        for agent in agents:
            assert agent.returncode == 0, agent.stderr
            result = [r for r in map(json.loads, agent.stdout.splitlines()) if r["kind"] == "result"]
            assert result and result[0]["outcome"] == "succeeded", agent.stdout

        def runs() -> list[dict[str, Any]]:
            r = httpx.get(f"{api}/v1/runs", headers={"Authorization": f"Bearer {auditor}"}, timeout=10)
            assert r.status_code == 200, r.text
            return [x for x in r.json()["runs"] if x.get("outcome") == "succeeded"]

        served = _eventually("the API lists both runs, completed", lambda: len(runs()) == 2 and runs())
        assert {r["run_id"] for r in served} == {"compose-a-short", "compose-b-short"}

        def counted() -> int:
            r = httpx.get(f"{api}/v1/analytics/outcomes", headers={"Authorization": f"Bearer {analyst}"},
                          timeout=10)
            if r.status_code == 503:  # no snapshot published yet
                return 0
            assert r.status_code == 200, r.text
            return sum(int(row["runs"]) for row in r.json()["rows"])

        _eventually("the analytics count both runs", lambda: counted() == 2, timeout=120)
        assert (stack.volume("analytics") / "CURRENT").exists()
        assert not (stack.volume("api-data") / "analytics.duckdb").exists()  # the API wrote none
        stack.alive()

        _, env, cwd, _ = stack.command("api", 0)
        verify = subprocess.run([*TACHO, "verify", "--json", "--trusted-key", vkey], env=env, cwd=cwd,
                                capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert json.loads(verify.stdout)["ok"] is True

        # the password really comes from the secret: without it the ledger refuses the user
        env.pop("TACHO_LEDGER_PASSWORD_FILE")
        denied = subprocess.run([*TACHO, "verify"], env=env, cwd=cwd, capture_output=True, text=True,
                                timeout=60)
        password = stack.secret("pg_password").read_text().strip()
        assert denied.returncode != 0 and "password" in denied.stderr.lower(), denied.stderr
        assert password not in denied.stdout + denied.stderr
    finally:
        codes = stack.stop()
    logs = {f"{p.service}-{p.replica}": p.text() for p in stack.processes}
    for name, code in codes.items():
        assert code in (0, -15), f"{name} exited {code}:\n{logs[name][-3000:]}"
        assert "Traceback" not in logs[name], logs[name][-3000:]
