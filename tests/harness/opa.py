"""A real Open Policy Agent: ``opa`` built from ``github.com/open-policy-agent/opa`` (Go), run as a
sidecar over its REST API, the way users deploy it.

- Build (idempotent, cached in ``<repo>/.cache/opa/bin/opa``, gitignored):
  ``python -m tests.harness.opa --build`` (needs ``go``; ``/usr/local/go/bin`` is tried too),
  through the product's ``replay.opa_build`` (``make demo`` builds the same way, into the same
  cache). A file lock (``.cache/opa.lock``) keeps parallel test runs from building twice. A cold build
  (module download + compile, empty GOPATH and GOCACHE) took 1 min 46 s wall clock on this
  2-core box; cached, nothing is built.
- :class:`OpaServer` runs ``opa run --server --addr 127.0.0.1:<free port>`` on a bundle
  directory or policy files, with console decision logging on (so OPA returns a ``decision_id``
  with every decision), waits for ``GET /health``, and can be stopped and started again on the
  same port (tests stop OPA in the middle of a run).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from replay import opa_build
from tests.harness import CACHE_DIR, free_port, port_open, tail, terminate, wait_until

VERSION = opa_build.VERSION
MODULE = opa_build.MODULE
ROOT = CACHE_DIR / "opa"
LOCK = CACHE_DIR / "opa.lock"


def bin_dir() -> Path:
    return ROOT / "bin"


def opa_path() -> Path:
    return opa_build.binary_path(ROOT)


def built() -> bool:
    return opa_build.cached(ROOT, VERSION) is not None


def build_seconds() -> float | None:
    """How long the cached binary took to build here (recorded by :func:`build`)."""
    return opa_build.build_seconds(ROOT, VERSION)


def go_binary() -> str | None:
    return opa_build.go_binary()


def unavailable_reason() -> str | None:
    """None if OPA can run here (built, or buildable), else why not."""
    if not built() and go_binary() is None:
        return "go not found (needed once to build opa; scripts/ci-prereqs.sh)"
    return None


def build() -> Path:
    """``go install`` opa into the cache (nothing if already there); the path of the binary.
    The product's own build (``replay.opa_build``, which ``make demo`` uses too), into the
    repository's ``.cache/opa``."""
    go = go_binary()
    if go is None and not built():
        raise RuntimeError("go not found: cannot build opa")
    try:
        return opa_build.build(ROOT, version=VERSION, go=go, lock=LOCK)
    except opa_build.OpaBuildError as e:
        raise RuntimeError(str(e)) from e


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class OpaServer:
    """One ``opa run --server`` on a free localhost port, over a bundle directory or policy files.

    Args:
        workdir: where its log goes.
        bundle: a bundle directory (with a ``.manifest`` carrying a ``revision``), loaded with
            ``--bundle``; or None.
        paths: policy/data files or directories loaded as they are (no bundle revision).
        config: an OPA configuration file (``--config-file``), e.g. ``services`` and
            ``decision_logs`` uploading decisions to Tachograph, or ``bundles`` downloaded
            from it.
        env: variables added to OPA's environment (its configuration expands ``${VAR}``, e.g.
            the bearer token of ``tacho policy opa-config``).
    """

    def __init__(self, workdir: Path, *, bundle: Path | None = None,
                 paths: Sequence[Path] = (), config: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        if bundle is None and not paths and config is None:
            raise ValueError("OpaServer needs a bundle directory, policy paths or a configuration "
                             "that names bundles to download")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bundle = bundle
        self.paths = [Path(p) for p in paths]
        self.config = config
        self.env = dict(env or {})
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "opa.log"
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [str(build()), "run", "--server", "--addr", f"127.0.0.1:{self.port}",
               "--set", "decision_logs.console=true", "--log-level", "error"]
        if self.config is not None:
            cmd += ["--config-file", str(self.config)]
        if self.bundle is not None:
            cmd += ["--bundle", str(self.bundle)]
        return cmd + [str(p) for p in self.paths]

    def start(self) -> OpaServer:
        """Start OPA and wait until ``GET /health`` answers 200."""
        t0 = time.monotonic()
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})
        logf.close()
        try:
            wait_until(lambda: self.proc.poll() is not None or _healthy(self.url), 30,
                       what="opa /health")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"opa did not become healthy:\n{tail(self.log_path)}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"opa exited {self.proc.returncode}:\n{tail(self.log_path)}")
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop OPA (``start()`` brings it back on the same port)."""
        terminate(self.proc, signal.SIGTERM, timeout=10)
        self.proc = None

    def restart(self) -> OpaServer:
        """Stop (if running), wait for the port to be free, and start again on the same port."""
        self.stop()
        wait_until(lambda: not port_open(self.port), 10, what="opa port free")
        return self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--build", action="store_true", help=f"go install opa {VERSION} into .cache")
    args = p.parse_args(argv)
    if args.build:
        path = build()
        took = build_seconds()
        print(f"opa {VERSION}: {path}" + (f" (built in {took:.0f}s)" if took else ""))
    reason = unavailable_reason()
    print(f"opa: {'available' if reason is None else 'UNAVAILABLE: ' + reason}")
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
