"""A policy served by its own Open Policy Agent: a candidate for a what-if policy replay, a
stored revision, or (``make demo``) the bundles a configuration names.

``opa run --server`` on a free localhost port over the candidate (a ``.rego`` file, or a bundle
directory loaded with ``--bundle`` so its ``.manifest`` revision is reported), or over an OPA
configuration that downloads bundles, the way the test harness and users run OPA. The binary is
the one given, else ``TACHO_OPA_BIN`` if set, else ``opa`` on PATH.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from ingest.policies import Revision, bundle_files
from replay.errors import PolicyReplayError
from replay.opa_build import configured


def opa_binary() -> str:
    """The opa executable: ``TACHO_OPA_BIN``, else ``opa`` on PATH; a clear error otherwise."""
    found = configured()
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
    """One OPA serving a policy for the duration of a ``with`` block.

    Args:
        policy: a ``.rego`` file or a bundle directory (or None with ``config``).
        config: an OPA configuration file (e.g. ``bundles`` downloaded from ``tacho serve``);
            then :meth:`start` returns once every bundle it names is activated.
        binary: the opa executable (default :func:`opa_binary`).
        env: more environment for OPA (e.g. the token its configuration reads as ``${VAR}``).
        startup_s: how long to wait for ``GET /health``.
    """

    def __init__(self, policy: Path | None = None, *, config: Path | None = None,
                 binary: str | None = None, env: Mapping[str, str] | None = None,
                 startup_s: float = 30.0) -> None:
        if policy is None and config is None:
            raise PolicyReplayError("an OPA sidecar needs a policy (.rego file or bundle directory) "
                                    "or a configuration naming bundles")
        if policy is not None:
            policy = Path(policy)
            if not policy.exists():
                raise PolicyReplayError(f"candidate policy {policy} does not exist")
            if policy.is_file() and policy.suffix != ".rego":
                raise PolicyReplayError(
                    f"candidate policy {policy} is neither a .rego file nor a bundle directory")
        self.policy = policy
        self.config = config
        self.binary = binary
        self.env = dict(env or {})
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
        cmd = [self.binary or opa_binary(), "run", "--server", "--addr", f"127.0.0.1:{self.port}",
               "--set", "decision_logs.console=true", "--log-level", "error"]
        if self.config is not None:
            cmd += ["--config-file", str(self.config)]
        if self.policy is None:
            return cmd
        if self.policy.is_dir():
            return [*cmd, "--bundle", str(self.policy)]
        return [*cmd, str(self.policy)]

    def start(self) -> OpaSidecar:
        """Start OPA and wait until it is healthy (with ``config``: its bundles activated); a
        policy that does not load is named."""
        cmd = self.command()
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **self.env})
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                what = f"the candidate policy {self.policy}" if self.policy else f"its configuration {self.config}"
                raise PolicyReplayError(
                    f"opa could not load {what} (exit {self._proc.returncode}):\n{self._tail()}")
            if self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise PolicyReplayError(f"opa did not become healthy within {self.startup_s:g}s:\n{self._tail()}")

    def _healthy(self) -> bool:
        """``GET /health`` answers 200 (``?bundles``: once every configured bundle is activated)."""
        query = "?bundles" if self.config is not None else ""
        try:
            return httpx.get(f"{self.url}/health{query}", timeout=1).status_code == 200
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


@contextlib.contextmanager
def revision_sidecar(rev: Revision, workspace: str, *, binary: str | None = None,
                     startup_s: float = 30.0) -> Iterator[OpaSidecar]:
    """OPA serving one stored policy revision: its files and a ``.manifest`` naming it (the
    bundle ``tacho serve`` gives OPA) written into a private temporary directory, removed after."""
    with tempfile.TemporaryDirectory(prefix="tacho-revision-") as tmp:
        root = Path(tmp) / "bundle"
        for path, content in bundle_files(rev, workspace).items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        with OpaSidecar(root, binary=binary, startup_s=startup_s) as sidecar:
            yield sidecar
