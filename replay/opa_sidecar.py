"""A candidate policy served by its own Open Policy Agent for a what-if policy replay.

``opa run --server`` on a free localhost port over the candidate (a ``.rego`` file, or a bundle
directory loaded with ``--bundle`` so its ``.manifest`` revision is reported), the way the
test harness and users run OPA. The binary is ``TACHO_OPA_BIN`` if set, else ``opa`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from replay.errors import PolicyReplayError


def opa_binary() -> str:
    """The opa executable: ``TACHO_OPA_BIN``, else ``opa`` on PATH; a clear error otherwise."""
    configured = os.environ.get("TACHO_OPA_BIN")
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise PolicyReplayError(f"TACHO_OPA_BIN={configured!r} is not an executable file")
        return configured
    found = shutil.which("opa")
    if found is None:
        raise PolicyReplayError(
            "opa not found: install Open Policy Agent (e.g. `go install "
            "github.com/open-policy-agent/opa@v1.22.4`) and put it on PATH, set TACHO_OPA_BIN, "
            "or give --opa-url of an OPA already loaded with the candidate policy")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OpaSidecar:
    """One OPA serving a candidate policy for the duration of a ``with`` block.

    Args:
        policy: a ``.rego`` file or a bundle directory.
        startup_s: how long to wait for ``GET /health``.
    """

    def __init__(self, policy: Path, *, startup_s: float = 30.0) -> None:
        policy = Path(policy)
        if not policy.exists():
            raise PolicyReplayError(f"candidate policy {policy} does not exist")
        if policy.is_file() and policy.suffix != ".rego":
            raise PolicyReplayError(f"candidate policy {policy} is neither a .rego file nor a bundle directory")
        self.policy = policy
        self.startup_s = startup_s
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkstemp(prefix="tacho-opa-", suffix=".log")[1])

    @property
    def url(self) -> str:
        """Where the sidecar answers."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The ``opa run --server`` command line (decision logging on, so answers carry ids)."""
        cmd = [opa_binary(), "run", "--server", "--addr", f"127.0.0.1:{self.port}",
               "--set", "decision_logs.console=true", "--log-level", "error"]
        if self.policy.is_dir():
            return [*cmd, "--bundle", str(self.policy)]
        return [*cmd, str(self.policy)]

    def start(self) -> OpaSidecar:
        """Start OPA and wait until it is healthy; a policy that does not load is named."""
        cmd = self.command()
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PolicyReplayError(
                    f"opa could not load the candidate policy {self.policy} (exit "
                    f"{self._proc.returncode}):\n{self._tail()}")
            if self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise PolicyReplayError(f"opa did not become healthy within {self.startup_s:g}s:\n{self._tail()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _tail(self) -> str:
        return self._log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Stop OPA and remove its log."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.unlink(missing_ok=True)

    def __enter__(self) -> OpaSidecar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
