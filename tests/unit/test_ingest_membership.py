"""A worker's instance id and saved member id (ingest.membership), with real processes and locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ingest.errors import IngestConfigError
from ingest.membership import (
    check_instance_id,
    claim_instance,
    forget_member_id,
    group_dir,
    host_name,
    load_member_id,
    save_member_id,
)
from tests.harness import REPO_ROOT, wait_until

_HOLDER = """
import os, sys, time
from pathlib import Path
from ingest.membership import claim_instance
claim = claim_instance(Path(sys.argv[1]), sys.argv[2])
if sys.argv[3] == "fork" and os.fork() == 0:  # a child like the fetch process, outliving nothing
    time.sleep(60)
    os._exit(0)
print(claim.instance_id, flush=True)
time.sleep(60)
"""


def _holder(base, group, fork=False) -> tuple[subprocess.Popen, str]:
    """A process that claims a default instance id of ``group`` and holds it."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(base), group, "fork" if fork else "-"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, start_new_session=fork)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_workers_of_a_group_on_one_machine_get_the_first_free_instance_ids_in_order(tmp_path):
    first = claim_instance(tmp_path, "ingest")
    second = claim_instance(tmp_path, "ingest")
    other_group = claim_instance(tmp_path, "audit")
    assert first.instance_id == f"{host_name()}-1"
    assert second.instance_id == f"{host_name()}-2"
    assert other_group.instance_id == f"{host_name()}-1"  # ids are per group
    first.release()
    assert claim_instance(tmp_path, "ingest").instance_id == f"{host_name()}-1"


def test_a_worker_killed_with_sigkill_leaves_its_instance_id_to_the_same_command_run_again(tmp_path):
    proc, held = _holder(tmp_path, "ingest")
    try:
        assert claim_instance(tmp_path, "ingest").instance_id != held  # taken while it lives
        proc.kill()
        proc.wait(10)
        assert claim_instance(tmp_path, "ingest").instance_id == held
    finally:
        proc.kill()
        proc.wait(10)


def test_a_child_process_still_running_does_not_keep_a_killed_workers_instance_id(tmp_path):
    proc, held = _holder(tmp_path, "ingest", fork=True)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the worker only: its forked child lives on
        proc.wait(10)
        assert claim_instance(tmp_path, "ingest").instance_id == held
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_an_explicit_instance_id_held_by_a_live_worker_is_refused_with_its_pid(tmp_path):
    held = claim_instance(tmp_path, "ingest", "worker-a")
    assert held.instance_id == "worker-a"
    with pytest.raises(IngestConfigError, match=rf"'worker-a' of group 'ingest' is in use by another "
                       rf"worker on this machine \(pid {os.getpid()}\).*own --instance-id"):
        claim_instance(tmp_path, "ingest", "worker-a")
    assert claim_instance(tmp_path, "other", "worker-a").instance_id == "worker-a"
    held.release()
    assert claim_instance(tmp_path, "ingest", "worker-a").instance_id == "worker-a"


@pytest.mark.parametrize("bad", ["", ".", "..", "a b", "a/b", "é", "x" * 101, "id\n"])
def test_instance_ids_kafka_would_not_take_are_refused_naming_the_rule(bad):
    with pytest.raises(IngestConfigError, match="not usable: 1 to 100 characters"):
        check_instance_id(bad)


def test_group_names_of_any_characters_get_a_directory_of_their_own(tmp_path):
    dirs = {group_dir(tmp_path, g) for g in ["a/b", "a_b", "../..", "ingest", "x" * 300]}
    assert len(dirs) == 5 and all(d.parent == tmp_path for d in dirs)
    assert all(len(d.name) < 80 for d in dirs)


def test_an_unwritable_state_directory_is_an_error_saying_where_and_what_to_do(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(IngestConfigError, match=r"cannot keep the worker's group membership in .*TACHO_DATA_DIR"):
        claim_instance(blocker / "ingest", "g")


def test_the_saved_member_id_is_read_back_and_forgotten_after_leaving(tmp_path):
    path = claim_instance(tmp_path, "g").member_file
    assert load_member_id(path) is None
    save_member_id(path, "tachograph-ingest-g-1-4f1c", "g", "127.0.0.1:9092")
    assert load_member_id(path) == "tachograph-ingest-g-1-4f1c"
    assert json.loads(path.read_text())["group"] == "g"
    save_member_id(path, "tachograph-ingest-g-1-77aa", "g", "127.0.0.1:9092")
    assert load_member_id(path) == "tachograph-ingest-g-1-77aa"
    forget_member_id(path)
    forget_member_id(path)  # already gone: nothing to do
    assert load_member_id(path) is None


@pytest.mark.parametrize("content", ["{", "[]", '{"member_id": 7}', '{"member_id": ""}',
                                     json.dumps({"member_id": "m" * 513})])
def test_an_unreadable_saved_member_id_is_ignored_and_the_worker_joins_afresh(tmp_path, content):
    path = tmp_path / "w.member.json"
    path.write_text(content)
    assert load_member_id(path) is None


def test_holding_an_instance_id_writes_the_holders_pid_for_the_error_message(tmp_path):
    proc, held = _holder(tmp_path, "ingest")
    try:
        lock = group_dir(tmp_path, "ingest") / f"{held}.lock"
        wait_until(lambda: lock.read_text().strip() == str(proc.pid), 5, what="the pid in the lock")
        with pytest.raises(IngestConfigError, match=rf"\(pid {proc.pid}\)"):
            claim_instance(tmp_path, "ingest", held)
    finally:
        proc.kill()
        proc.wait(10)
    assert claim_instance(tmp_path, "ingest", held).instance_id == held
