"""A worker's place in its consumer group across restarts (decision record 0009).

Each group worker has an **instance id**, stable across restarts: ``--instance-id``, or by
default ``<host name>-<n>`` where ``n`` is the first slot no live worker of the group on this
machine holds. A slot is held with ``flock`` on ``<instance>.lock``; the kernel drops it when the
process dies, even by ``kill -9``, so the same command run again gets the same id, and a second
worker started beside the first gets the next one. Forked children (the fetch process) close
their copy of the lock at once, so a child outliving its worker for a moment holds nothing.

Beside the lock the worker keeps the **member id** the group coordinator gave that instance
(``<instance>.member.json``). A restarted worker rejoins with it: to the coordinator it is the
member that was already there, so it takes its partitions back at once instead of joining as a
stranger and waiting for the dead member's session to expire. A graceful stop leaves the group
and forgets the member id; a member id that has expired meanwhile is refused by the coordinator
and the worker joins afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.errors import IngestConfigError

log = logging.getLogger(__name__)

_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_SLOTS = 64  # workers of one group on one machine with a default instance id
MAX_MEMBER_ID = 512  # Kafka member ids are client id + "-" + UUID


def group_dir(base: Path, group: str) -> Path:
    """Where the instances of ``group`` keep their locks and member ids (one directory a group)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", group)[:60].strip(".") or "group"
    digest = hashlib.sha256(group.encode()).hexdigest()[:10]
    return base / f"{safe}-{digest}"


def host_name() -> str:
    """This machine's name as an instance id prefix (characters Kafka ids allow)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])[:60].strip(".-")
    return name or "worker"


def check_instance_id(instance_id: str) -> str:
    """``instance_id`` if it is a usable instance id, else IngestConfigError saying why."""
    if not _ID.fullmatch(instance_id) or instance_id in (".", ".."):
        raise IngestConfigError(
            f"instance id {instance_id!r} is not usable: 1 to 100 characters of A-Z, a-z, 0-9, "
            "'.', '_' and '-'"
        )
    return instance_id


@dataclass
class InstanceClaim:
    """An instance id held by this process (until ``release()`` or the process ends)."""

    group: str
    instance_id: str
    lock_path: Path
    member_file: Path
    _fd: int

    def release(self) -> None:
        """Give the instance id up (closing the lock file drops the lock)."""
        if self._fd >= 0:
            _held.discard(self._fd)
            os.close(self._fd)
            self._fd = -1


def claim_instance(base: Path, group: str, instance_id: str | None = None) -> InstanceClaim:
    """Hold ``instance_id`` of ``group`` on this machine, or the first free default one.

    Raises IngestConfigError when an explicit id is held by another live worker, or when every
    default slot is taken, or when the state directory cannot be written.
    """
    where = group_dir(base, group)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IngestConfigError(
            f"cannot keep the worker's group membership in {where}: {e.strerror}. Make "
            "TACHO_DATA_DIR writable, or point it at a writable directory"
        ) from e
    if instance_id is not None:
        check_instance_id(instance_id)
        claim = _try_claim(where, group, instance_id)
        if claim is None:
            holder = _holder(where / f"{instance_id}.lock")
            raise IngestConfigError(
                f"instance id {instance_id!r} of group {group!r} is in use by another worker on "
                f"this machine{holder}: give each worker its own --instance-id, or leave it out "
                "to get a free one"
            )
        return claim
    prefix = host_name()
    for slot in range(1, MAX_SLOTS + 1):
        claim = _try_claim(where, group, f"{prefix}-{slot}")
        if claim is not None:
            return claim
    raise IngestConfigError(
        f"{MAX_SLOTS} workers of group {group!r} already run on this machine: give this one an "
        "--instance-id"
    )


_held: set[int] = set()  # lock file descriptors this process holds
_fork_hook = False


def _close_in_child() -> None:
    """After a fork: the child lets go of its copies of the parent's locks."""
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def _try_claim(where: Path, group: str, instance_id: str) -> InstanceClaim | None:
    global _fork_hook
    lock_path = where / f"{instance_id}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    if not _fork_hook:
        os.register_at_fork(after_in_child=_close_in_child)
        _fork_hook = True
    _held.add(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return InstanceClaim(group, instance_id, lock_path, where / f"{instance_id}.member.json", fd)


def _holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(lock_path.read_text().split()[0])})"
    return ""


# -- the member id, read and written by the fetcher (which owns the Kafka consumer) -------------
def load_member_id(path: Path) -> str | None:
    """The member id saved for this instance, or None (none saved, or unreadable: join afresh)."""
    try:
        data: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the saved group member id in %s: %s", path, e)
        return None
    member = data.get("member_id") if isinstance(data, dict) else None
    if not isinstance(member, str) or not 0 < len(member) <= MAX_MEMBER_ID:
        log.warning("ignoring the saved group member id in %s: not a member id", path)
        return None
    return member


def save_member_id(path: Path, member_id: str, group: str, bootstrap: str) -> None:
    """Remember the member id the coordinator gave this instance (atomically replaced)."""
    tmp = path.with_name(path.name + ".tmp")
    body = {"member_id": member_id, "group": group, "bootstrap": bootstrap,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        tmp.write_text(json.dumps(body) + "\n")
        os.replace(tmp, path)
    except OSError as e:  # a restart then joins afresh: slower, never wrong
        log.warning("could not save the group member id to %s: %s", path, e)


def forget_member_id(path: Path) -> None:
    """Forget the member id (after leaving the group: it is no longer valid)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def resume_member(consumer: Any, member_id: str) -> bool:
    """Make ``consumer``'s first JoinGroup carry ``member_id`` (rejoin as that member).

    kafka-python has no public setting for this; the coordinator's ``reset_generation`` is what
    it calls itself when a broker hands it a member id. Returns False (and the consumer joins as
    a new member) if this kafka-python has no such method.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    reset = getattr(coordinator, "reset_generation", None)
    if reset is None:
        log.warning("this kafka-python cannot rejoin as a known member: joining as a new one")
        return False
    reset(member_id)
    return True
