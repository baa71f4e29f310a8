"""The ledger commands as a user runs them: `tacho import / verify / checkpoint / evidence / keys`."""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from domain.note import NoteVerifier
from tests.cli_support import tacho


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "events.jsonl"
    made = json.loads(tacho(path.parent, "generate", str(path), "--runs", "60", "--seed", "5", "--json").stdout)
    assert made == {"events": len(path.read_bytes().splitlines()), "runs": 60, "out": str(path)}
    return path


def test_import_reports_counts_and_quarantines_bad_lines(tmp_path, workload):
    mixed = tmp_path / "mixed.jsonl"
    lines = workload.read_bytes().splitlines()
    mixed.write_bytes(b"\n".join([*lines[:5], b"{broken", b'{"spec": "tachograph.event/1"}', *lines[5:]]) + b"\n")
    out = json.loads(tacho(tmp_path, "import", str(mixed), "--json").stdout)
    assert out["accepted"] == len(lines) and out["quarantined"] == 2 and out["duplicates"] == 0
    again = json.loads(tacho(tmp_path, "import", str(workload), "--json").stdout)
    assert again == {"accepted": 0, "duplicates": len(lines), "quarantined": 0, "held": 0, "lines": len(lines)}
    q = json.loads(tacho(tmp_path, "quarantine", "list", "--json").stdout)
    assert q["total"] == 2
    assert q["items"][0]["source"] == {"kind": "file", "name": "mixed.jsonl", "line": 6}
    assert q["items"][0]["reason"].startswith("contract: not JSON")
    shown = json.loads(tacho(tmp_path, "quarantine", "show", str(q["items"][0]["id"]), "--json").stdout)
    assert shown["raw"] == "{broken"


def test_the_signing_key_is_created_with_mode_0600(tmp_path, workload):
    tacho(tmp_path, "import", str(workload))
    key = tmp_path / "keys" / "ledger.skey"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    vkey = tacho(tmp_path, "keys").stdout.strip()
    assert vkey.startswith("tachograph.local/")
    assert NoteVerifier.from_vkey(vkey).name == vkey.split("+")[0]
    assert "PRIVATE" not in tacho(tmp_path, "keys", "--json").stdout


def test_verify_passes_then_fails_with_position_after_an_edit(tmp_path, workload):
    tacho(tmp_path, "import", str(workload))
    ok = json.loads(tacho(tmp_path, "verify", "--json").stdout)
    assert ok["ok"] is True and ok["entries"] > 500 and ok["checkpoints"] >= 1
    c = sqlite3.connect(tmp_path / "ledger.db")
    c.execute("UPDATE entries SET data = replace(data, 'succeeded', 'failed') WHERE idx = (SELECT min(idx) FROM entries WHERE type = 'run.completed')")
    c.commit()
    bad = tacho(tmp_path, "verify", "--json", check=False)
    assert bad.returncode == 1
    out = json.loads(bad.stdout)
    assert out["ok"] is False and isinstance(out["position"], int) and out["reason"]


def test_verify_with_a_trusted_checkpoint_detects_a_rollback(tmp_path, workload):
    half = tmp_path / "half.jsonl"
    lines = workload.read_bytes().splitlines(keepends=True)
    half.write_bytes(b"".join(lines[: len(lines) // 2]))
    tacho(tmp_path, "import", str(half))
    backup = (tmp_path / "ledger.db").read_bytes()
    tacho(tmp_path, "import", str(workload))
    trusted = tmp_path / "trusted.note"
    trusted.write_text(tacho(tmp_path, "checkpoint").stdout)
    assert tacho(tmp_path, "verify", "--trusted-checkpoint", str(trusted)).returncode == 0
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "ledger.db") + suffix).unlink(missing_ok=True)
    (tmp_path / "ledger.db").write_bytes(backup)
    assert tacho(tmp_path, "verify").returncode == 0  # a valid earlier state on its own
    rolled = tacho(tmp_path, "verify", "--trusted-checkpoint", str(trusted), "--json", check=False)
    assert rolled.returncode == 1 and "rollback" in json.loads(rolled.stdout)["reason"]


def test_verify_rejects_checkpoints_from_a_key_that_is_not_trusted(tmp_path, workload):
    tacho(tmp_path, "import", str(workload))
    other = tmp_path / "other"
    tacho(other, "import", str(workload))
    foreign = tacho(other, "keys").stdout.strip()
    res = tacho(tmp_path, "verify", "--trusted-key", foreign, "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["ok"] is False


def test_key_rotation_is_recorded_and_history_still_verifies_from_the_first_key(tmp_path, workload):
    tacho(tmp_path, "import", str(workload))
    first = tacho(tmp_path, "keys").stdout.strip()
    rotated = json.loads(tacho(tmp_path, "keys", "rotate", "--json").stdout)
    assert rotated["old_vkey"] == first and rotated["new_vkey"] != first
    assert tacho(tmp_path, "keys").stdout.strip() == rotated["new_vkey"]
    more = tmp_path / "more.jsonl"
    tacho(tmp_path, "generate", str(more), "--runs", "5", "--seed", "9", "--workspace", "beta")
    tacho(tmp_path, "import", str(more))
    assert tacho(tmp_path, "verify", "--trusted-key", first).returncode == 0
    assert tacho(tmp_path, "verify", "--trusted-key", rotated["new_vkey"], check=False).returncode == 1


def test_evidence_bundle_round_trip_and_offline_verification(tmp_path, workload):
    tacho(tmp_path, "import", str(workload))
    bundle = tmp_path / "run.json"
    made = json.loads(tacho(tmp_path, "evidence", "run-0000004", "-o", str(bundle), "--json").stdout)
    assert made == {"run_id": "run-0000004", "workspace": "acme",
                    "entries": len(json.loads(bundle.read_text())["entries"]), "out": str(bundle)}
    vkey = tacho(tmp_path, "keys").stdout.strip()
    offline = tmp_path / "elsewhere"  # no store at all
    out = json.loads(tacho(offline, "verify-evidence", str(bundle), "--trusted-key", vkey, "--json").stdout)
    assert out["ok"] is True and out["run_id"] == "run-0000004" and out["entries"] >= 3
    assert not (offline / "ledger.db").exists()
    data = json.loads(bundle.read_text())
    data["entries"].pop(1)
    bundle.write_text(json.dumps(data))
    res = tacho(offline, "verify-evidence", str(bundle), "--trusted-key", vkey, check=False)
    assert res.returncode == 1 and "INVALID" in res.stdout


def test_an_edited_run_id_column_fails_verify_and_evidence_instead_of_hiding_the_event(tmp_path, workload):
    """Issue 13 item 9: only the run_id column of a run's last entry is changed."""
    tacho(tmp_path, "import", str(workload))
    with sqlite3.connect(tmp_path / "ledger.db") as c:
        (last,) = c.execute(
            "SELECT max(idx) FROM entries WHERE workspace = 'acme' AND run_id = 'run-0000004'"
        ).fetchone()
        c.execute("UPDATE entries SET run_id = 'run-elsewhere' WHERE idx = ?", (last,))
    res = tacho(tmp_path, "verify", "--json", check=False)
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["ok"] is False and out["position"] == last
    assert out["reason"].startswith("stored column run_id is 'run-elsewhere' but the entry's bytes say 'run-0000004'")
    res = tacho(tmp_path, "evidence", "run-0000004", "--workspace", "acme", "-o", str(tmp_path / "b.json"),
                check=False)
    assert res.returncode != 0 and not (tmp_path / "b.json").exists()
    assert f"entry at index {last} belongs to run 'run-0000004' by its bytes" in res.stdout + res.stderr


def test_a_bundle_missing_its_last_entry_fails_and_an_old_one_needs_an_explicit_flag(tmp_path, workload):
    tacho(tmp_path, "import", str(workload))
    bundle = tmp_path / "run.json"
    tacho(tmp_path, "evidence", "run-0000004", "-o", str(bundle))
    vkey = tacho(tmp_path, "keys").stdout.strip()
    ok = tacho(tmp_path, "verify-evidence", str(bundle), "--trusted-key", vkey)
    assert "all of the run's entries" in ok.stdout
    data = json.loads(bundle.read_text())
    data["entries"].pop()
    bundle.write_text(json.dumps(data))
    res = tacho(tmp_path, "verify-evidence", str(bundle), "--trusted-key", vkey, "--json", check=False)
    assert res.returncode == 1 and "does not prove completeness" in json.loads(res.stdout)["reason"]
    del data["run_head"]
    data["format"] = "tachograph.evidence/1"
    bundle.write_text(json.dumps(data))
    res = tacho(tmp_path, "verify-evidence", str(bundle), "--trusted-key", vkey, check=False)
    assert res.returncode == 1 and "does not prove completeness" in res.stdout
    res = tacho(tmp_path, "verify-evidence", str(bundle), "--trusted-key", vkey, "--allow-incomplete")
    assert "NOT PROVEN TO BE ALL" in res.stdout


def test_ingest_gives_up_on_an_unreachable_broker_after_its_connect_timeout(tmp_path):
    from tests.harness import free_port

    port = free_port()  # nothing listens here
    t0 = time.monotonic()
    proc = tacho(tmp_path, "ingest", "--bootstrap", f"127.0.0.1:{port}", "--topic", "t",
                 "--connect-timeout", "1", check=False)
    took = time.monotonic() - t0
    assert proc.returncode != 0
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in proc.stderr
    assert "kafka.net" not in proc.stderr  # one error in our words, not kafka-python's log lines
    assert took < 20, f"took {took:.1f}s with --connect-timeout 1 (kafka-python's default is 30s)"


def test_quarantine_list_shows_previews_sizes_and_digests_and_the_raw_bytes_on_request(tmp_path):
    import hashlib

    junk = b"J" * 2_000_000
    src = tmp_path / "junk.jsonl"
    src.write_bytes(junk + b"\n{broken\n")
    tacho(tmp_path, "import", str(src), "--json")
    listed = json.loads(tacho(tmp_path, "quarantine", "list", "--json").stdout)
    big, small = listed["items"]
    assert (big["bytes"], big["kept"], big["sha256"]) == (len(junk), len(junk), hashlib.sha256(junk).hexdigest())
    assert big["preview"] == "J" * 1024 and "raw" not in big
    assert small["preview"] == "{broken" and listed["usage"] == [
        {"workspace": None, "items": 2, "kept_bytes": len(junk) + 7, "truncated": 0}]
    whole = json.loads(tacho(tmp_path, "quarantine", "list", "--raw", "--limit", "1", "--json").stdout)
    assert whole["items"][0]["raw"] == junk.decode() and whole["next_after"] == big["id"]
    out = tmp_path / "raw.bin"
    tacho(tmp_path, "quarantine", "show", str(big["id"]), "--raw-out", str(out), "--json")
    assert out.read_bytes() == junk


def _rolled_back(tmp_path: Path, workload: Path) -> tuple[Path, bytes]:
    """Import half the workload, keep a copy of the database, then import the rest."""
    half = tmp_path / "half.jsonl"
    lines = workload.read_bytes().splitlines(keepends=True)
    half.write_bytes(b"".join(lines[: len(lines) // 2]))
    tacho(tmp_path, "import", str(half))
    tacho(tmp_path, "checkpoint")  # a clean copy: checkpointed, WAL folded in by the next open
    db = tmp_path / "ledger.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db, db.read_bytes()


def _restore(db: Path, backup: bytes) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(backup)


def test_verify_takes_several_trusted_checkpoints_and_names_the_one_that_fails(tmp_path, workload):
    db, backup = _rolled_back(tmp_path, workload)
    old = tmp_path / "old.note"
    old.write_text(tacho(tmp_path, "checkpoint").stdout)
    tacho(tmp_path, "import", str(workload))
    new = tmp_path / "new.note"
    new.write_text(tacho(tmp_path, "checkpoint").stdout)
    ok = json.loads(tacho(tmp_path, "verify", "--trusted-checkpoint", str(new),
                          "--trusted-checkpoint", str(old), "--json").stdout)
    assert ok["ok"] and len(ok["trusted_checkpoints"]) == 2
    _restore(db, backup)
    res = tacho(tmp_path, "verify", "--trusted-checkpoint", str(old), "--trusted-checkpoint", str(new),
                "--json", check=False)
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["reason"].startswith(f"trusted checkpoint {new} covers")
    assert "rollback" in out["reason"]


def test_the_state_file_keeps_the_newest_proven_checkpoint_and_refuses_a_rollback(tmp_path, workload):
    state = tmp_path / "auditor" / "state.note"
    state.parent.mkdir()
    db, backup = _rolled_back(tmp_path, workload)
    first = json.loads(tacho(tmp_path, "verify", "--state", str(state), "--json").stdout)
    assert first["ok"] and first["state"]["updated"] and stat.S_IMODE(state.stat().st_mode) == 0o600
    small = first["state"]["size"]
    assert state.read_text().split("\n")[1] == str(small)
    tacho(tmp_path, "import", str(workload))
    second = json.loads(tacho(tmp_path, "verify", "--state", str(state), "--json").stdout)
    assert second["ok"] and second["state"]["size"] > small
    assert second["trusted_checkpoints"] == [small]  # the earlier state was checked, then replaced
    kept = state.read_text()
    _restore(db, backup)
    res = tacho(tmp_path, "verify", "--state", str(state), check=False)
    assert res.returncode == 1
    assert f"state file {state} covers {second['state']['size']} entries" in res.stdout
    assert "rollback" in res.stdout
    assert state.read_text() == kept  # a failed run never moves the state


def test_a_state_file_from_another_history_is_refused(tmp_path, workload):
    other = tmp_path / "other"
    other.mkdir()
    tacho(other, "import", str(workload))
    state = tmp_path / "state.note"
    assert tacho(other, "verify", "--state", str(state)).returncode == 0
    tacho(tmp_path, "import", str(workload))  # another ledger: another key, another origin
    res = tacho(tmp_path, "verify", "--state", str(state), "--json", check=False)
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["reason"].startswith(f"state file {state}")


def test_a_state_file_refuses_a_history_rewritten_with_the_ledger_s_own_key(tmp_path, workload):
    honest = tmp_path / "honest"
    honest.mkdir()
    tacho(honest, "import", str(workload))
    state = tmp_path / "state.note"
    assert tacho(honest, "verify", "--state", str(state)).returncode == 0
    # whoever holds the key and the data dir starts the log again and signs another history
    forged = tmp_path / "forged"
    (forged / "keys").mkdir(parents=True, mode=0o700)
    key = forged / "keys" / "ledger.skey"
    key.write_bytes((honest / "keys" / "ledger.skey").read_bytes())
    key.chmod(0o600)
    other = tmp_path / "other.jsonl"
    tacho(tmp_path, "generate", str(other), "--runs", "90", "--seed", "2")
    tacho(forged, "import", str(other))
    assert tacho(forged, "verify").returncode == 0  # signed by the same key: valid on its own
    res = tacho(forged, "verify", "--state", str(state), "--json", check=False)
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["reason"].startswith(f"state file {state} (size ")
    assert "does not match the ledger's tree at that size" in out["reason"]
