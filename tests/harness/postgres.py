"""A real, throwaway PostgreSQL server for tests, from Debian's ``postgresql`` binaries.

PostgreSQL refuses to run as root: when we are root the server runs as the ``postgres`` OS
user (created by the Debian package). The cluster lives in a temp dir, listens on 127.0.0.1 on
a free port (unix socket in the temp dir), ``trust`` auth, durability off (tests only).

    with PostgresServer() as pg:
        dsn = pg.create_database("orders_test")   # fresh database -> psycopg 3 conninfo URL
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import weakref
from functools import cache
from pathlib import Path

from tests.harness import free_port, port_open, tail, terminate, wait_until

_live: weakref.WeakSet[PostgresServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path)) or (0,)


@cache
def postgres_bin_dir() -> Path | None:
    """Directory holding ``initdb`` and ``postgres`` (newest /usr/lib/postgresql/*/bin, or PATH)."""
    env = os.environ.get("TACHO_PG_BIN")
    if env and (Path(env) / "initdb").is_file():
        return Path(env)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for cand in candidates:
        if (Path(cand) / "initdb").is_file() and (Path(cand) / "postgres").is_file():
            return Path(cand)
    initdb = shutil.which("initdb")
    if initdb:
        real = Path(initdb).resolve().parent
        if (real / "postgres").is_file():
            return real
    return None


def postgres_unavailable_reason() -> str | None:
    """None if a server can be started here, else why not."""
    bindir = postgres_bin_dir()
    if bindir is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` OS user to run the server as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (3) is not installed"
    return None


def postgres_available() -> bool:
    return postgres_unavailable_reason() is None


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresServer:
    def __init__(self, port: int | None = None, user: str = "postgres") -> None:
        self.bin_dir = postgres_bin_dir()
        if self.bin_dir is None:
            raise RuntimeError(postgres_unavailable_reason())
        self.port = port or free_port()
        self.db_user = user  # database superuser name
        self.workdir = Path(tempfile.mkdtemp(prefix="tacho-pg-"))
        self.data_dir = self.workdir / "data"
        self.socket_dir = self.workdir / "sock"
        self.log_path = self.workdir / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._initialized = False
        # OS user the server runs as: `postgres` when we are root, ourselves otherwise
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._run_as: tuple[int, int] | None = (pw.pw_uid, pw.pw_gid)
        else:
            self._run_as = None

    # -- helpers -------------------------------------------------------------------------------
    def _popen_kwargs(self) -> dict:
        kw: dict = {"cwd": self.workdir, "stdin": subprocess.DEVNULL}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._run_as is not None:
            uid, gid = self._run_as
            kw.update(user=uid, group=gid, extra_groups=[])
            env["HOME"] = str(self.workdir)
        kw["env"] = env
        return kw

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, *self._run_as)

    def _initdb(self) -> None:
        # the workdir from mkdtemp is 0700 root: let the server user own it
        self._chown(self.workdir)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        self.log_path.touch()
        self._chown(self.log_path)
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-U", self.db_user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]  # fmt: skip
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, **self._popen_kwargs()
        )
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        conf = self.data_dir / "postgresql.conf"
        with open(conf, "a") as f:
            f.write(
                "\n# tests/harness/postgres.py\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 200\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "shared_buffers = 64MB\n"
                "log_min_messages = warning\n"
                "log_statement = 'none'\n"
            )
        self._initialized = True

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> PostgresServer:
        if self.running:
            return self
        t0 = time.monotonic()
        if not self._initialized:
            self._initdb()
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                **self._popen_kwargs(),
            )  # fmt: skip
        _live.add(self)
        try:
            wait_until(self._ready, timeout, interval=0.1, what="postgres to accept connections")
        except BaseException as exc:
            self.stop(timeout=5)
            raise RuntimeError(
                f"PostgreSQL did not start on 127.0.0.1:{self.port}: {exc}\n"
                f"--- tail of {self.log_path} ---\n{tail(self.log_path)}"
            ) from exc
        self.startup_seconds = time.monotonic() - t0
        return self

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited early (code {self.proc and self.proc.returncode})")
        if not port_open(self.port, timeout=0.2):
            return False
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                conn.execute("select 1")
            return True
        except psycopg.OperationalError:  # "the database system is starting up"
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect clients)."""
        terminate(self.proc, signal.SIGINT, timeout)

    def close(self) -> None:
        """Stop and delete the cluster."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- databases -----------------------------------------------------------------------------
    def dsn_for(self, dbname: str) -> str:
        """psycopg 3 / libpq connection URL for database ``dbname``."""
        return f"postgresql://{self.db_user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def dsn(self) -> str:
        """DSN of the maintenance database ``postgres`` (shared: don't put test data there)."""
        return self.dsn_for("postgres")

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database and return its DSN. ``name`` must be a plain
        lowercase identifier; default: a unique ``t_<hex>`` name."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:16]}"
        if not _IDENT.match(name):
            raise ValueError(f"database name must match {_IDENT.pattern}: {name!r}")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
        return self.dsn_for(name)

    def tail_log(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __repr__(self) -> str:
        return f"<PostgresServer 127.0.0.1:{self.port} {'running' if self.running else 'stopped'}>"
