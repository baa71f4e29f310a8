"""A real, independent witness: ``litewitness`` from ``filippo.io/torchwood`` (Go), with an ssh-agent.

- Build (idempotent, cached in ``<repo>/.cache/witness/<version>/bin``, gitignored):
  ``python -m tests.harness.witness --build`` (needs ``go``; ``/usr/local/go/bin`` is tried too).
- :class:`LiteWitness` starts a dedicated ``ssh-agent`` holding a fresh Ed25519 key, registers a
  log with ``witnessctl add-log`` / ``add-key``, and runs ``litewitness`` on a free localhost port.
  Its ``vkey`` is computed from the key (and checked against the one litewitness logs).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import CACHE_DIR, free_port, port_open, tail, terminate, wait_until

VERSION = "v0.6.1"
MODULE = "filippo.io/torchwood"
TOOLS = ("litewitness", "witnessctl")


def bin_dir(version: str = VERSION) -> Path:
    return CACHE_DIR / "witness" / version / "bin"


def built(version: str = VERSION) -> bool:
    return all((bin_dir(version) / t).is_file() for t in TOOLS)


def go_binary() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.is_file() else None


def unavailable_reason() -> str | None:
    """None if litewitness can run here (built, or buildable), else why not."""
    for tool in ("ssh-agent", "ssh-keygen", "ssh-add"):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian: openssh-client)"
    if not built() and go_binary() is None:
        return "go not found (needed once to build litewitness; scripts/ci-prereqs.sh)"
    return None


def build(version: str = VERSION) -> Path:
    """``go install`` litewitness and witnessctl into the cache (nothing if already there)."""
    out = bin_dir(version)
    if built(version):
        return out
    go = go_binary()
    if go is None:
        raise RuntimeError("go not found: cannot build litewitness")
    root = CACHE_DIR / "witness"
    env = {
        **os.environ,
        "GOBIN": str(out),
        "GOPATH": str(root / "gopath"),
        "GOCACHE": str(root / "gocache"),
        "GOFLAGS": "-mod=mod",
        "PATH": f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [go, "install", *(f"{MODULE}/cmd/{t}@{version}" for t in TOOLS)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0 or not built(version):
        raise RuntimeError(f"go install of litewitness failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return out


def _ssh_ed25519_key(pub_line: str) -> bytes:
    """The raw 32-byte key of an ``ssh-ed25519 AAAA... comment`` public key line."""
    blob = base64.b64decode(pub_line.split()[1])
    (n,) = struct.unpack(">I", blob[:4])
    assert blob[4 : 4 + n] == b"ssh-ed25519", blob[: 4 + n]
    (m,) = struct.unpack(">I", blob[4 + n : 8 + n])
    key = blob[8 + n : 8 + n + m]
    assert len(key) == 32
    return key


def witness_vkey(name: str, key: bytes) -> str:
    """The cosignature/v1 vkey, computed here from the spec (c2sp.org/tlog-cosignature)."""
    kid = hashlib.sha256(name.encode() + b"\n\x04" + key).digest()[:4]
    key64 = base64.b64encode(b"\x04" + key).decode()
    return f"{name}+{kid.hex()}+{key64}"


class LiteWitness:
    """One litewitness with its own database, ssh-agent and key."""

    def __init__(self, workdir: Path, name: str = "witness.test/w1") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.db = self.workdir / "litewitness.db"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self._sockdir = tempfile.mkdtemp(prefix="lw")  # short: unix socket paths are limited
        self.sock = os.path.join(self._sockdir, "agent.sock")
        self.log_path = self.workdir / "litewitness.log"
        self.public_key = b""
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def vkey(self) -> str:
        return witness_vkey(self.name, self.public_key)

    def _tool(self, name: str) -> str:
        return str(build() / name)

    def ctl(self, *args: str) -> str:
        proc = subprocess.run(
            [self._tool("witnessctl"), args[0], "-db", str(self.db), *args[1:]],
            capture_output=True, text=True, timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"witnessctl {args} failed: {proc.stderr}")
        return proc.stdout

    def add_log(self, origin: str, vkey: str) -> None:
        """Register our log: its origin and the verifier key of its checkpoints."""
        self.ctl("add-log", "-origin", origin)
        self.ctl("add-key", "-origin", origin, "-key", vkey)

    def logs(self) -> dict[str, dict[str, object]]:
        """``witnessctl list-logs``: origin -> {size, root_hash, keys}."""
        out = {}
        for line in self.ctl("list-logs").splitlines():
            if line.strip():
                d = json.loads(line)
                out[d["origin"]] = d
        return out

    def start(self) -> LiteWitness:
        t0 = time.monotonic()
        build()
        if self.agent is None:
            key = self.workdir / "witness_key"
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            self.public_key = _ssh_ed25519_key(Path(f"{key}.pub").read_text())
            self.agent = subprocess.Popen(
                ["ssh-agent", "-D", "-a", self.sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wait_until(lambda: os.path.exists(self.sock), 10, what="ssh-agent socket")
            subprocess.run(
                ["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": self.sock},
                check=True, capture_output=True,
            )
        self._start_witness()
        self.startup_seconds = time.monotonic() - t0
        logged = self._logged_vkey()
        if logged != self.vkey:
            raise RuntimeError(f"litewitness logs vkey {logged!r}, computed {self.vkey!r}")
        return self

    def _start_witness(self) -> None:
        fingerprint = hashlib.sha256(self.public_key).hexdigest()
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self._tool("litewitness"), "-db", str(self.db), "-name", self.name, "-key", fingerprint,
             "-ssh-agent", self.sock, "-listen", f"127.0.0.1:{self.port}"],
            stdout=logf, stderr=subprocess.STDOUT,
        )
        logf.close()
        try:
            wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, 30, what="litewitness port")
        except TimeoutError:
            raise RuntimeError(f"litewitness did not start:\n{tail(self.log_path)}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"litewitness exited {self.proc.returncode}:\n{tail(self.log_path)}")

    def _logged_vkey(self) -> str | None:
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "verifier key" in line and "vkey=" in line:
                return line.split("vkey=", 1)[1].split()[0].strip('"')
        return None

    def stop(self) -> None:
        """Stop litewitness (its database and key stay: ``resume()`` brings it back)."""
        terminate(self.proc, signal.SIGINT, timeout=10)
        self.proc = None

    def resume(self) -> None:
        """Start litewitness again on the same port, database and key."""
        wait_until(lambda: not port_open(self.port), 10, what="port free")
        self._start_witness()

    def close(self) -> None:
        self.stop()
        terminate(self.agent, timeout=5)
        self.agent = None
        shutil.rmtree(self._sockdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", action="store_true", help=f"go install litewitness {VERSION} into .cache")
    args = p.parse_args(argv)
    if args.build:
        print(f"litewitness {VERSION}: {build()}")
    reason = unavailable_reason()
    print(f"litewitness: {'available' if reason is None else 'UNAVAILABLE: ' + reason}")
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
