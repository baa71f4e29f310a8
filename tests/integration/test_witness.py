"""Witnesses against a real, independent one: litewitness (filippo.io/torchwood v0.6.1).

litewitness cosigns only what it can verify (our signature, and a consistency proof from the
size it holds), so these tests also check our checkpoints and RFC 9162 proofs against another
implementation. Item 10 of issue 13 (a rollback nobody could catch) is reproduced and caught.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from api.witness_check import stored_cosignatures
from api.witness_pusher import WitnessPusher
from domain.witness import parse_witness
from tests.cli_support import tacho
from tests.factories import items, make_ledger, workload_events
from tests.harness import wait_until
from tests.harness.witness import LiteWitness
from tests.integration.api_support import close_api, make_api, publish, workload


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Three JSONL files: a first half, the whole workload, and another workspace's runs."""
    d = tmp_path_factory.mktemp("events")
    whole, other = d / "whole.jsonl", d / "other.jsonl"
    tacho(d, "generate", str(whole), "--runs", "40", "--seed", "4")
    tacho(d, "generate", str(other), "--runs", "30", "--seed", "8", "--workspace", "other")
    half = d / "half.jsonl"
    lines = whole.read_bytes().splitlines(keepends=True)
    half.write_bytes(b"".join(lines[: len(lines) // 2]))
    return half, whole, other


def registered(data: Path, w: LiteWitness) -> None:
    """Create the ledger's key and add the log (origin + vkey) to the witness."""
    keys = json.loads(tacho(data, "keys", "--json").stdout)
    w.add_log(keys["name"], keys["vkey"])


def witness_size(w: LiteWitness) -> int:
    (log,) = w.logs().values()
    return int(log["size"])  # type: ignore[call-overload]


def ledger_size(data: Path) -> int:
    con = sqlite3.connect(data / "ledger.db")
    try:
        return int(con.execute("SELECT size FROM head").fetchone()[0])
    finally:
        con.close()


def test_checkpoints_are_cosigned_from_size_zero_then_with_consistency_proofs(
    tmp_path, litewitness_factory, events, monkeypatch
):
    half, whole, _ = events
    w = litewitness_factory()
    data = tmp_path / "data"
    registered(data, w)
    monkeypatch.setenv("TACHO_WITNESSES", f"{w.url}={w.vkey}")
    first = json.loads(tacho(data, "import", str(half), "--json").stdout)
    assert [o["status"] for o in first["witnesses"]] == ["cosigned"]
    assert witness_size(w) == ledger_size(data) > 0  # the first push: old 0, no proof
    second = json.loads(tacho(data, "import", str(whole), "--json").stdout)
    assert [o["status"] for o in second["witnesses"]] == ["cosigned"]
    # the witness checked our consistency proof from the first size to this one
    assert witness_size(w) == ledger_size(data) > first["witnesses"][0]["size"]
    note = tacho(data, "checkpoint").stdout
    assert f"— {w.name} " in note  # printed with the witness's cosignature
    offline = json.loads(tacho(data, "verify", "--witness", w.vkey, "--json").stdout)
    assert offline["ok"] and offline["witnesses"]["cosigned"] == 1
    online = json.loads(tacho(data, "verify", "--witness", f"{w.url}={w.vkey}", "--json").stdout)
    assert online["ok"] and online["witnesses"]["reports"][0]["witness_size"] == ledger_size(data)


def _silent_socket() -> socket.socket:
    """A listening socket nobody answers: a witness that hangs rather than refuses."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def test_a_witness_that_is_down_holds_up_no_append_and_is_caught_up_later(tmp_path, litewitness_factory):
    w = litewitness_factory()
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=50)
    w.add_log(ledger.config.origin, ledger.signer.vkey)
    hang = _silent_socket()
    hanging = parse_witness(f"http://127.0.0.1:{hang.getsockname()[1]}={witness_key_of_nobody()}")
    pusher = WitnessPusher(ledger, [parse_witness(f"{w.url}={w.vkey}"), hanging],
                           timeout_s=3.0, retry_max_s=0.5, poll_s=0.05).start()
    try:
        ledger.append(items(workload_events(runs=3, seed=1, workspaces=("a",))))
        ledger.checkpoint()
        wait_until(lambda: witness_size(w) == ledger.store.size(), 20, what="first cosignature")
        w.stop()
        slowest = 0.0
        for n in range(8):
            t0 = time.monotonic()
            ledger.append(items(workload_events(runs=2, seed=10 + n, workspaces=(f"w{n}",))))
            ledger.checkpoint()
            slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.1)
        assert slowest < 2.0  # never waits for a witness (one hangs 3 s a request, one is down)
        down_size = ledger.store.size()
        assert witness_size(w) < down_size
        assert stored_cosignatures(ledger.store, ledger.store.latest_checkpoint().note, [pusher.states[0].config]) == {}
        w.resume()
        wait_until(lambda: witness_size(w) == down_size, 30, what="the witness caught up")
        row = ledger.store.latest_checkpoint()
        wait_until(lambda: stored_cosignatures(ledger.store, row.note, [pusher.states[0].config]), 10,
                   what="the cosignature stored")
        ident = parse_witness(w.vkey).verifier.ident
        wait_until(lambda: [s["cosigned_size"] for s in pusher.status() if s["witness"] == ident] == [down_size],
                   10, what=f"the pusher's status {pusher.status()} {down_size}")
    finally:
        pusher.stop()
        hang.close()
        ledger.store.close()


def witness_key_of_nobody() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from domain.witness import CosignatureVerifier

    key = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32).public_key()
    return CosignatureVerifier("nobody.test/w", key.public_bytes(Encoding.Raw, PublicFormat.Raw)).vkey


def test_http_ingest_under_serve_keeps_appending_while_the_witness_is_down(tmp_path, litewitness_factory):
    w = litewitness_factory()
    api = make_api(tmp_path, witnesses=f"{w.url}={w.vkey}", witness_retry_max_s=0.5)
    w.add_log(api.ledger.config.origin, api.ledger.signer.vkey)
    try:
        with api.client:  # runs the app's lifespan: the pusher starts with it
            evs = workload(runs=12, seed=3)  # one stream, sent in order in six parts
            parts = [evs[len(evs) * k // 6 : len(evs) * (k + 1) // 6] for k in range(6)]
            publish(api, parts[0])
            api.ledger.checkpoint()
            wait_until(lambda: witness_size(w) == api.ledger.store.size(), 20, what="first cosignature")
            w.stop()
            for part in parts[1:]:
                t0 = time.monotonic()
                body = publish(api, part)
                assert body["accepted"] > 0 and time.monotonic() - t0 < 2.0
                api.ledger.checkpoint()
            def says_unreachable() -> bool:
                checks = api.client.get("/readyz").json()["checks"]
                return any(k.startswith("witness ") and "UNREACHABLE" in v for k, v in checks.items())

            wait_until(says_unreachable, 10, what="readyz naming the witness that is down")
            w.resume()
            wait_until(lambda: witness_size(w) == api.ledger.store.size(), 30, what="caught up")
    finally:
        close_api(api)


def test_item_10_a_restored_copy_of_the_data_dir_is_caught_as_a_rollback(
    tmp_path, litewitness_factory, events, monkeypatch
):
    half, whole, other = events
    w = litewitness_factory()
    data = tmp_path / "data"
    registered(data, w)
    monkeypatch.setenv("TACHO_WITNESSES", f"{w.url}={w.vkey}")
    tacho(data, "import", str(half))
    con = sqlite3.connect(data / "ledger.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # the attacker's copy, taken while the ledger was smaller
    tacho(data, "import", str(whole))  # the ledger grows, signs, and the witness cosigns
    grown = ledger_size(data)
    assert witness_size(w) == grown
    shutil.rmtree(data)
    shutil.copytree(copy, data)  # ...and the copy is put back
    assert ledger_size(data) < grown
    assert tacho(data, "verify").returncode == 0  # on its own, a valid earlier state
    assert tacho(data, "verify", "--witness", w.vkey).returncode == 0  # its old cosignature is valid
    online = tacho(data, "verify", "--witness", f"{w.url}={w.vkey}", "--json", check=False)
    out = json.loads(online.stdout)
    assert online.returncode == 1
    assert "rolled back" in out["reason"] and f"size {grown}" in out["reason"]
    assert out["witnesses"]["reports"][0]["problem"] == "rollback"
    assert out["witnesses"]["reports"][0]["witness_size"] == grown
    # the restored ledger grows again: the witness never cosigns its new checkpoints
    for f in (whole, other):
        res = tacho(data, "import", str(f), "--json", check=False)
        statuses = [o["status"] for o in json.loads(res.stdout)["witnesses"]]
        assert statuses in (["rollback"], ["fork"]), statuses
    res = tacho(data, "checkpoint", check=False)
    assert res.returncode == 1 and ("FORK" in res.stderr or "ROLLBACK" in res.stderr)
    assert f"— {w.name} " not in res.stdout
    assert witness_size(w) == grown  # the witness still holds the real history
    offline = tacho(data, "verify", "--witness", w.vkey, "--json", check=False)
    out = json.loads(offline.stdout)
    assert offline.returncode == 1 and "only 0 of the 1" in out["reason"]


def test_a_normal_ledger_passes_with_a_witness_threshold(tmp_path, litewitness_factory, events, monkeypatch):
    half, _, _ = events
    w1 = litewitness_factory("witness.test/w1")
    w2 = litewitness_factory("witness.test/w2")
    data = tmp_path / "data"
    registered(data, w1)
    registered(data, w2)
    monkeypatch.setenv("TACHO_WITNESSES", f"{w1.url}={w1.vkey},{w2.url}={w2.vkey}")
    pushed = json.loads(tacho(data, "import", str(half), "--json").stdout)["witnesses"]
    assert [o["status"] for o in pushed] == ["cosigned", "cosigned"]
    both = ["--witness", f"{w1.url}={w1.vkey}", "--witness", f"{w2.url}={w2.vkey}"]
    assert tacho(data, "verify", *both).returncode == 0
    w2.stop()
    one = json.loads(tacho(data, "verify", *both, "--witness-threshold", "1", "--json").stdout)
    assert one["ok"] and one["witnesses"]["cosigned"] == 1
    assert one["witnesses"]["reports"][1]["problem"] == "unreachable"
    res = tacho(data, "verify", *both, "--json", check=False)
    out = json.loads(res.stdout)
    assert res.returncode == 1 and "only 1 of the 2" in out["reason"] and "cannot reach" in out["reason"]
    offline = ["--witness", w1.vkey, "--witness", w2.vkey]
    assert tacho(data, "verify", *offline).returncode == 0  # both cosignatures are stored


def test_tacho_ingest_appends_while_the_witness_is_down_and_pushes_when_it_is_back(
    tmp_path, litewitness_factory, tansu_broker, topic_factory
):
    from tests.integration.ingest_support import (
        assert_exactly,
        log_tail,
        produce,
        start_worker,
        wait_exit,
        workload_messages,
    )

    w = litewitness_factory()
    data = tmp_path / "data"
    registered(data, w)
    topic = topic_factory(partitions=2, broker=tansu_broker)
    messages = workload_messages(30, seed=5)
    produce(tansu_broker.bootstrap, topic, messages)
    w.stop()
    env = {"TACHO_WITNESSES": f"{w.url}={w.vkey}", "TACHO_WITNESS_WAIT_S": "2"}
    t0 = time.monotonic()
    first = start_worker(tansu_broker.bootstrap, topic, data, "--assign", "--until-idle", "2", **env)
    assert wait_exit(first, 120) == 0, log_tail(first)
    assert time.monotonic() - t0 < 60
    assert_exactly(data / "ledger.db", [eid for _, eid, _ in messages])  # nothing waited on it
    assert "cannot reach" in log_tail(first, 200)  # the witness being down is said, not hidden
    w.resume()
    second = start_worker(tansu_broker.bootstrap, topic, data, "--assign", "--until-idle", "1", **env)
    assert wait_exit(second, 120) == 0, log_tail(second)
    assert witness_size(w) == ledger_size(data)  # caught up by the next worker


def test_a_witness_that_is_down_is_retried_with_backoff_not_hammered(tmp_path):
    import threading

    closing = socket.socket()  # accepts and hangs up at once: every request fails fast
    closing.bind(("127.0.0.1", 0))
    closing.listen(64)
    attempts: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = closing.accept()
            except OSError:
                return
            attempts.append(time.monotonic())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    ledger = make_ledger(tmp_path / "l.db")
    ledger.append(items(workload_events(runs=2)))
    ledger.checkpoint()
    down = parse_witness(f"http://127.0.0.1:{closing.getsockname()[1]}={witness_key_of_nobody()}")
    pusher = WitnessPusher(ledger, [down], timeout_s=1.0, retry_max_s=1.0, poll_s=0.02).start()
    try:
        time.sleep(3.2)
        [check] = pusher.checks().values()
    finally:
        pusher.stop()
        closing.close()
        ledger.store.close()
    # backoff 0.5 s, then 1 s (the maximum): about 4 tries in 3.2 s, not one per 20 ms poll
    assert 3 <= len(attempts) <= 6, attempts
    assert check.startswith("UNREACHABLE at size ")
