"""The halt client an agent process uses: light imports, paths that keep any target whole, and
which halt stops which run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from tachograph.halts import Halt, HaltSet, HttpHalts, halt_path

ROOT = Path(__file__).resolve().parents[2]


def test_the_runtime_over_http_brings_no_duckdb_fastapi_or_ledger_code() -> None:
    code = ("import sys, json, tachograph; rt = tachograph.connect('http://127.0.0.1:9', api_key='k'); "
            "rt.close(); print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = {"duckdb", "fastapi", "starlette", "uvicorn", "sqlite3", "psycopg", "kafka", "eventsourcing",
             "pyarrow", "domain", "ingest", "api", "projections", "replay"}
    assert not heavy & loaded, heavy & loaded


@pytest.mark.parametrize("target", [
    "billing-ops", "a/b", "/lead", "trail/", "a//b", "..", ".", "../../etc/passwd", "a/../b", "100%", "a%2Fb",
    "q?x=1#frag", "space name", "émoji ☃/ü", "+plus&amp;",
])
def test_a_halt_path_keeps_any_target_as_one_segment_that_no_client_folds_away(target: str) -> None:
    path = halt_path("workflow", target)
    prefix = "/v1/halts/workflow/"
    assert path.startswith(prefix)
    segment = path[len(prefix):]
    assert "/" not in segment and "?" not in segment and "#" not in segment
    assert unquote(segment) == target
    assert httpx.URL("http://h" + path).raw_path.decode() == path  # httpx sends it as it is


def test_the_broadest_halt_that_names_a_run_stops_it() -> None:
    def halt(scope: str, target: str, index: int) -> Halt:
        return Halt(scope, target, "why", "someone", "2026-01-01T00:00:00Z", index)

    halts = HaltSet("acme", (halt("run", "r1", 3), halt("agent", "bot", 2), halt("workflow", "refunds", 1)), '"e"')
    assert halts.find("refunds", "bot", "r1").scope == "workflow"
    assert halts.find("triage", "bot", "r1").scope == "agent"
    assert halts.find("triage", "other", "r1").scope == "run"
    assert halts.find("triage", "other", "r2") is None
    assert halts.find("acme", "acme", "acme") is None  # a name equal to the workspace is not its halt
    everything = HaltSet("acme", (*halts.halts, halt("workspace", "acme", 4)), '"f"')
    assert everything.find("triage", "other", "r2").scope == "workspace"
    assert HaltSet.from_json(json.loads(json.dumps(everything.to_json()))) == everything


def test_an_agent_may_not_ask_for_halts_fresher_than_never_or_staler_than_a_second() -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        HttpHalts("http://127.0.0.1:9", "k", max_age_s=5)
