"""The ``opa`` binary: found where it is installed, or built once with Go into a cache.

Found, in this order: ``TACHO_OPA_BIN``, ``opa`` on ``PATH``, a build cached earlier. Built with
``go install github.com/open-policy-agent/opa@v1.22.4`` into ``<cache>/bin`` (``GOPATH`` and
``GOCACHE`` inside the cache too), under a file lock so parallel builds happen once. The cache is
the source checkout's ``.cache/opa`` when Tachograph runs from one (``make demo`` and the test
harness share it), else ``opa`` under the user's cache directory. A cold build (module download
and compile) took 1 min 46 s on a 2-core box; with the cache, nothing is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from replay.errors import PolicyReplayError

VERSION = "v1.22.4"
MODULE = "github.com/open-policy-agent/opa"
BUILD_TIMEOUT_S = 1800.0


class OpaBuildError(PolicyReplayError):
    """No opa could be found or built here (the message says what is missing or what failed)."""


def default_cache() -> Path:
    """Where opa is built: the source checkout's ``.cache/opa``, else the user's cache."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "replay").is_dir():
        return checkout / ".cache" / "opa"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tachograph" / "opa"


def binary_path(cache: Path) -> Path:
    """Where ``go install`` puts opa in ``cache``."""
    return cache / "bin" / "opa"


def _stamp(cache: Path, version: str) -> Path:
    """Which version the cached binary is (``go install`` names it just ``opa``); it holds the
    seconds the build took."""
    return cache / "bin" / f".version-{version}"


def cached(cache: Path, version: str = VERSION) -> Path | None:
    """The binary a build of ``version`` left in ``cache`` (None: none)."""
    path = binary_path(cache)
    return path if path.is_file() and _stamp(cache, version).is_file() else None


def build_seconds(cache: Path, version: str = VERSION) -> float | None:
    """How long the cached build of ``version`` took (None: not built, or not recorded)."""
    with contextlib.suppress(OSError, ValueError):
        return float(_stamp(cache, version).read_text())
    return None


def go_binary() -> str | None:
    """The ``go`` tool: on PATH, else ``/usr/local/go/bin/go`` (where the Go tarball installs)."""
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.is_file() else None


def configured() -> str | None:
    """``TACHO_OPA_BIN`` if set (an OpaBuildError when it names no executable), else ``opa`` on
    PATH, else None."""
    value = os.environ.get("TACHO_OPA_BIN")
    if value:
        if not (Path(value).is_file() and os.access(value, os.X_OK)):
            raise OpaBuildError(f"TACHO_OPA_BIN={value!r} is not an executable file")
        return value
    return shutil.which("opa")


def find(cache: Path | None = None) -> str | None:
    """An opa to run: :func:`configured`, else the cached build (None: neither)."""
    found = configured()
    if found is not None:
        return found
    built = cached(cache or default_cache())
    return str(built) if built is not None else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(cache: Path | None = None, *, version: str = VERSION, go: str | None = None,
          lock: Path | None = None, timeout_s: float = BUILD_TIMEOUT_S) -> Path:
    """``go install`` opa ``version`` into ``cache`` (nothing when it is there); its path.

    ``go``: the go tool (default :func:`go_binary`); ``lock``: the file that keeps processes from
    building at once (default ``<cache>.lock`` beside the cache directory).
    Raises OpaBuildError without Go, or with go's own output when the build fails.
    """
    cache = cache or default_cache()
    done = cached(cache, version)
    if done is not None:
        return done
    with _locked(lock or cache.parent / f"{cache.name}.lock"):
        done = cached(cache, version)
        if done is not None:  # another process built it while we waited
            return done
        go = go or go_binary()
        if go is None:
            raise OpaBuildError("go not found: cannot build opa (install Go, or install opa and "
                                "put it on PATH or in TACHO_OPA_BIN)")
        env = {
            **os.environ,
            "GOBIN": str(cache / "bin"),
            "GOPATH": str(cache / "gopath"),
            "GOCACHE": str(cache / "gocache"),
            "GOFLAGS": "-mod=mod",
            "PATH": f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        (cache / "bin").mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run([go, "install", f"{MODULE}@{version}"], env=env,
                                  capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OpaBuildError(f"go install of opa {version} did not finish: {e}") from e
        if proc.returncode != 0 or not binary_path(cache).is_file():
            raise OpaBuildError(f"go install of opa {version} failed ({proc.returncode}):\n"
                                f"{proc.stderr[-3000:]}")
        _stamp(cache, version).write_text(f"{time.monotonic() - t0:.1f}")
    return binary_path(cache)
