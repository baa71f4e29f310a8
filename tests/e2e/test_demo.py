"""`tacho demo` (what `make demo` runs) end to end: the main job on embedded defaults, twice."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def demo(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TACHO_KAFKA_BOOTSTRAP"}
    env["TACHO_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "demo", "--runs", "30", *args], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )


def secrets(keys_file: Path) -> list[str]:
    rows = [line.split("\t") for line in keys_file.read_text().splitlines() if not line.startswith("#")]
    return [row[-1] for row in rows if len(row) >= 3]


def test_the_demo_runs_the_main_job_and_reports_it_as_json_without_secrets(tmp_path: Path) -> None:
    first = demo(tmp_path, "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    out: dict[str, Any] = json.loads(first.stdout)  # stdout is the JSON alone; the story is on stderr
    assert "verify the whole ledger" in first.stderr

    ingest = out["ingest"]
    assert ingest["via"] == "kafka" and ingest["dev_broker"] is True
    assert ingest["published"]["runs"] == 30
    assert ingest["ingested"]["accepted"] == ingest["published"]["events"] > 0
    assert ingest["ingested"]["quarantined"] == 0 and ingest["ingested"]["duplicates"] == 0

    verified = out["verify"]["result"]
    assert verified["ok"] is True and verified["entries"] == ingest["published"]["events"]
    assert out["verify"]["checkpoint"].startswith("tachograph")
    assert out["evidence"]["result"]["ok"] is True and Path(out["evidence"]["file"]).is_file()

    assert out["replays"] and all(r["gate"]["passed"] for r in out["replays"])
    assert {r["candidate_model"] for r in out["replays"]} == {None, "sim-large-v2"}
    assert set(out["analytics"]["reports"]) >= {"cost-per-outcome", "violations", "budgets", "approvals"}
    assert out["analytics"]["projection"]["lag"] == 0
    assert out["ledger"]["entries"] == out["analytics"]["projection"]["position"] > verified["entries"]

    keys_file = Path(out["console"]["keys_file"])
    assert out["console"]["created_keys"] is True
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert secrets(keys_file) and not any(s in first.stdout for s in secrets(keys_file))

    # a second demo in the same data directory: the same seeded runs are published again (onto a
    # fresh dev broker) and absorbed as duplicates; the ledger grows only by the new live runs
    second = demo(tmp_path, "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["ingest"]["ingested"]["accepted"] == 0
    assert again["ingest"]["ingested"]["duplicates"] == ingest["published"]["events"]
    assert again["verify"]["result"]["ok"] is True
    assert again["verify"]["result"]["entries"] == out["ledger"]["entries"]
    assert again["ledger"]["entries"] > out["ledger"]["entries"]
    assert again["console"]["created_keys"] is False


def test_the_demo_names_a_bad_via(tmp_path: Path) -> None:
    res = demo(tmp_path, "--via", "carrier-pigeon")
    assert res.returncode != 0 and "--via must be kafka or file" in res.stderr
