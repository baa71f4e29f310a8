"""Issue 13 items 8 and 11: the data directory is private, and the signing key can live outside it."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import httpx

from tests.cli_support import start_tacho, tacho
from tests.harness import free_port


def modes(root: Path) -> dict[str, str]:
    """Octal mode of every file and directory under ``root`` (root included), by relative path."""
    out = {".": oct(root.stat().st_mode & 0o777)}
    for path in root.rglob("*"):
        out[path.relative_to(root).as_posix()] = oct(path.lstat().st_mode & 0o777)
    return out


def open_ones(root: Path) -> dict[str, str]:
    """Everything under ``root`` that is not owner-only: directories other than 0700, files other than 0600."""
    found = {}
    for rel, mode in modes(root).items():
        path = root / rel
        want = "0o700" if path.is_dir() else "0o600"
        if mode != want:
            found[rel] = mode
    return found


def serve_and_read(data: Path, key: str) -> dict[str, str]:
    """Start `tacho serve`, make it write (an audited read), and return what is open while it runs."""
    port = free_port()
    proc = start_tacho(data, "serve", "--port", str(port), "--log-level", "warning")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tacho serve did not start"
            time.sleep(0.1)
        got = httpx.get(f"http://127.0.0.1:{port}/v1/runs", headers={"Authorization": f"Bearer {key}"})
        assert got.status_code == 200, got.text
        assert (data / "ledger.db-wal").exists()  # the audited read was appended: the WAL is there
        return open_ones(data)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_every_file_under_the_data_dir_is_owner_only_whoever_created_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)  # an existing, open data directory from an earlier version
    (data / "old").mkdir()
    os.chmod(data / "old", 0o755)
    (data / "old" / "notes.txt").write_text("left open")
    os.chmod(data / "old" / "notes.txt", 0o644)
    events = tmp_path / "events.jsonl"
    tacho(data, "generate", str(events), "--runs", "30")
    assert open_ones(data) == {}  # tightened when a command starts
    tacho(data, "demo", "--via", "embedded", "--runs", "4")  # agents' runs, evidence, replay reports
    tacho(data, "import", str(events))
    tacho(data, "project")
    tacho(data, "export", "parquet", str(data / "lake"))
    made = json.loads(tacho(data, "apikey", "create", "--workspace", "acme", "--role", "auditor",
                            "--json").stdout)
    while_serving = serve_and_read(data, made["secret"])
    assert while_serving == {}
    assert open_ones(data) == {}
    names = set(modes(data))
    assert {"ledger.db", "analytics.duckdb", "keys/ledger.skey", "keys/apikeys.db"} <= names
    assert any(n.startswith("replays/") for n in names) and any(n.endswith(".parquet") for n in names)


def test_the_signing_key_can_live_outside_the_data_directory(tmp_path, monkeypatch):
    data = tmp_path / "data"
    key = tmp_path / "secrets" / "tacho" / "ledger.skey"
    monkeypatch.setenv("TACHO_SIGNING_KEY", str(key))
    events = tmp_path / "events.jsonl"
    tacho(data, "generate", str(events), "--runs", "10")
    tacho(data, "import", str(events))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    skey_text = key.read_text().strip()
    leaked = [p for p in data.rglob("*") if p.is_file() and skey_text.encode() in p.read_bytes()]
    assert leaked == [] and not list(data.rglob("*.skey"))  # no private key in the data directory
    shown = json.loads(tacho(data, "keys", "--json").stdout)
    assert shown["key_file"] == str(key.resolve())
    vkey = shown["vkey"]
    assert tacho(data, "checkpoint").returncode == 0
    result = json.loads(tacho(data, "verify", "--trusted-key", vkey, "--json").stdout)
    assert result["ok"] and result["checkpoints"] >= 1
    rotated = json.loads(tacho(data, "keys", "rotate", "--json").stdout)
    retired = list(key.parent.glob("ledger.*.retired.skey"))
    assert len(retired) == 1 and stat.S_IMODE(retired[0].stat().st_mode) == 0o600
    assert not list(data.rglob("*.skey"))
    assert json.loads(tacho(data, "keys", "--json").stdout)["vkey"] == rotated["new_vkey"]
    assert json.loads(tacho(data, "verify", "--trusted-key", vkey, "--json").stdout)["ok"]
