"""Root fixtures: real external services (Kafka brokers, PostgreSQL, headless Chromium).

Fixtures
--------
- ``tansu_broker`` (session)  -> ``tests.harness.kafka.Tansu``, started once.
- ``apache_kafka`` (session)  -> ``tests.harness.kafka.ApacheKafka``, started once.
- ``kafka_broker`` (session, parametrized over the *available* brokers: ids ``tansu``/``apache``)
  -> the broker object; use ``.bootstrap``, ``.create_topic()``, ``.name``.
- ``topic_factory`` (function) -> ``make(partitions=1, *, broker=None, create=True) -> str``:
  a unique topic name per call, created (leaders elected) on ``broker`` -- default: the
  broker of the test's ``kafka_broker``/``apache_kafka``/``tansu_broker`` fixture.
- ``postgres_server`` (session) -> ``tests.harness.postgres.PostgresServer``.
- ``postgres_dsn_factory`` (function) -> ``make(name=None) -> dsn``: a new database per call.
- ``browser`` (function) -> a selenium 4 Chrome WebDriver (headless Debian chromium).
- ``litewitness_factory`` (function) -> ``make(name) -> tests.harness.witness.LiteWitness``:
  a running litewitness (C2SP tlog-witness) with its own ssh-agent, key and database.
- ``llm_server`` (module) -> ``tests.harness.llm.LlamaServer``: SmolLM2-135M-Instruct served by
  llama-cpp-python's OpenAI-compatible server (built once into .cache; ``.base_url``,
  ``.model``, ``.chat_requests()``).
- ``opa_server`` (function) -> ``make(bundle=None, paths=(), config=None) -> tests.harness.opa.OpaServer``:
  a running Open Policy Agent (built once with go into .cache) over a bundle directory or
  policy files; ``.url``, ``.stop()``, ``.restart()``.

Unavailable services are reported in the header and the terminal summary, and the tests that
need them fail (never skip); ``make test`` runs scripts/ci-prereqs.sh first so they exist. With
``TACHO_REQUIRE_ALL_SERVICES=1`` (CI) a missing service stops the session before any test runs.
Tests using these fixtures get the ``kafka`` / ``postgres`` / ``browser`` / ``witness`` / ``llm`` /
``opa`` markers automatically.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections import Counter

import pytest

from tests.harness import browser as _browser
from tests.harness import kafka as _kafka
from tests.harness import llm as _llm
from tests.harness import opa as _opa
from tests.harness import postgres as _postgres
from tests.harness import witness as _witness

REQUIRE_ALL = os.environ.get("TACHO_REQUIRE_ALL_SERVICES", "") not in ("", "0", "false", "no")

_BROKER_FIXTURE = {"tansu": "tansu_broker", "apache": "apache_kafka"}
_KAFKA_FIXTURES = {"kafka_broker", "topic_factory", *_BROKER_FIXTURE.values()}
_PG_FIXTURES = {"postgres_server", "postgres_dsn_factory"}
_BROWSER_FIXTURES = {"browser"}
_WITNESS_FIXTURES = {"litewitness_factory"}
_LLM_FIXTURES = {"llm_server"}
_OPA_FIXTURES = {"opa_bin", "opa_server"}


def _service_status() -> dict[str, str | None]:
    """{service: None if it can run here, else the reason}."""
    status: dict[str, str | None] = {
        f"kafka:{name}": reason for name, reason in _kafka.broker_availability().items()
    }
    status["postgres"] = _postgres.postgres_unavailable_reason()
    status["chromium"] = _browser.chromium_unavailable_reason()
    status["litewitness"] = _witness.unavailable_reason()
    status["llm"] = _llm.unavailable_reason()
    status["opa"] = _opa.unavailable_reason()
    return status


_AVAILABLE_BROKERS = _kafka.available_brokers()

# what actually happened this session, for the terminal summary
_started: dict[str, float] = {}  # service -> startup seconds
_broker_tests: Counter[str] = Counter()  # broker -> collected tests parametrized with it


# ----------------------------------------------------------------------------------------------
# reporting hooks
# ----------------------------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for service, reason in _service_status().items():
        lines.append(
            f"service {service}: " + ("available" if reason is None else f"UNAVAILABLE ({reason})")
        )
    lines.append(
        f"kafka_broker params: {_AVAILABLE_BROKERS or 'NONE'}"
        + ("  [TACHO_REQUIRE_ALL_SERVICES=1]" if REQUIRE_ALL else "")
    )
    return lines


def pytest_sessionstart(session: pytest.Session) -> None:
    if not REQUIRE_ALL:
        return
    missing = {s: r for s, r in _service_status().items() if r is not None}
    if missing:
        detail = "\n".join(f"  - {s}: {r}" for s, r in missing.items())
        pytest.exit(
            "TACHO_REQUIRE_ALL_SERVICES=1 but these services cannot run here:\n"
            f"{detail}\n(run scripts/ci-prereqs.sh)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if names & _PG_FIXTURES:
            item.add_marker(pytest.mark.postgres)
        if names & _BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
        if names & _WITNESS_FIXTURES:
            item.add_marker(pytest.mark.witness)
        if names & _LLM_FIXTURES:
            item.add_marker(pytest.mark.llm)
        if names & _OPA_FIXTURES:
            item.add_marker(pytest.mark.opa)


def pytest_collection_finish(session: pytest.Session) -> None:
    _broker_tests.clear()
    for item in session.items:  # after -k/-m deselection
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "kafka_broker" in callspec.params:
            _broker_tests[callspec.params["kafka_broker"]] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    tr = terminalreporter
    status = _service_status()
    used = _started or _broker_tests
    if not used and all(r is None for r in status.values()):
        return
    tr.write_sep("-", "external services (tests/harness)")
    for name in _kafka.BROKER_NAMES:
        reason = status[f"kafka:{name}"]
        key = f"kafka:{name}"
        if reason is not None:
            tr.write_line(f"kafka {name:7s} NOT RUN -- unavailable: {reason}", yellow=True)
        elif key in _started:
            tr.write_line(
                f"kafka {name:7s} ran (startup {_started[key]:.1f}s; "
                f"{_broker_tests[name]} kafka_broker-parametrized tests selected)",
                green=True,
            )
        else:
            tr.write_line(f"kafka {name:7s} available, not started (no test needed it)")
    for service in ("postgres", "chromium", "litewitness", "llm", "opa"):
        reason = status[service]
        if reason is not None:
            tr.write_line(f"{service:13s} NOT RUN -- unavailable: {reason}", yellow=True)
        elif service in _started:
            tr.write_line(f"{service:13s} ran (startup {_started[service]:.1f}s)", green=True)
        else:
            tr.write_line(f"{service:13s} available, not started (no test needed it)")


def _unavailable(service: str, reason: str) -> None:
    # never a skip: a test that cannot reach its real service has not passed
    pytest.fail(
        f"{service} unavailable: {reason} (scripts/ci-prereqs.sh installs what is missing)",
        pytrace=False,
    )


# ----------------------------------------------------------------------------------------------
# Kafka
# ----------------------------------------------------------------------------------------------


def _broker_fixture(name: str):
    reason = _kafka.broker_availability()[name]
    if reason is not None:
        _unavailable(f"kafka broker {name}", reason)
    broker = _kafka.make_broker(name)
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    _started[f"kafka:{name}"] = broker.startup_seconds or 0.0
    return broker


@pytest.fixture(scope="session")
def tansu_broker():
    broker = _broker_fixture("tansu")
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def apache_kafka():
    broker = _broker_fixture("apache")
    yield broker
    broker.close()


@pytest.fixture(
    scope="session",
    params=list(_kafka.BROKER_NAMES),  # every broker, always: an unavailable one fails its tests
)
def kafka_broker(request: pytest.FixtureRequest):
    """Each available broker in turn (ids: tansu, apache); started once per session."""
    return request.getfixturevalue(_BROKER_FIXTURE[request.param])


def _sanitize(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9._-]+", "-", text).strip("-")[:60] or "t"


@pytest.fixture
def topic_factory(request: pytest.FixtureRequest):
    """``make(partitions=1, *, broker=None, create=True) -> topic name`` (unique per call)."""
    counter = iter(range(1, 1_000_000))
    base = _sanitize(request.node.name)

    def default_broker():
        for fixture in ("kafka_broker", "apache_kafka", "tansu_broker"):
            if fixture in request.fixturenames:
                return request.getfixturevalue(fixture)
        raise RuntimeError(
            "topic_factory needs a broker: pass broker=..., or also request the "
            "kafka_broker / apache_kafka / tansu_broker fixture"
        )

    def make(partitions: int = 1, *, broker=None, create: bool = True) -> str:
        name = f"{base}-{next(counter)}-{uuid.uuid4().hex[:8]}"
        if create:
            (broker or default_broker()).create_topic(name, partitions)
        return name

    return make


# ----------------------------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    reason = _postgres.postgres_unavailable_reason()
    if reason is not None:
        _unavailable("postgres", reason)
    server = _postgres.PostgresServer()
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    _started["postgres"] = server.startup_seconds or 0.0
    yield server
    server.close()


@pytest.fixture
def postgres_dsn_factory(postgres_server):
    """``make(name=None) -> dsn``: creates a fresh database per call (never a shared one)."""

    def make(name: str | None = None) -> str:
        return postgres_server.create_database(name)

    return make


# ----------------------------------------------------------------------------------------------
# Browser
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def browser():
    reason = _browser.chromium_unavailable_reason()
    if reason is not None:
        _unavailable("chromium", reason)
    t0 = time.monotonic()
    driver = _browser.make_driver()
    _started.setdefault("chromium", time.monotonic() - t0)
    yield driver
    driver.quit()


# ----------------------------------------------------------------------------------------------
# Witness (litewitness, built from filippo.io/torchwood with go)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def litewitness_bin():
    """The litewitness/witnessctl binaries, built once into .cache (fails, never skips)."""
    reason = _witness.unavailable_reason()
    if reason is not None:
        _unavailable("litewitness", reason)
    t0 = time.monotonic()
    try:
        path = _witness.build()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        _unavailable("litewitness", f"cannot build it: {e}")
    _started.setdefault("litewitness", time.monotonic() - t0)
    return path


@pytest.fixture
def litewitness_factory(litewitness_bin, tmp_path_factory):
    """``make(name="witness.test/w1") -> LiteWitness`` started (its own agent, key and db)."""
    made: list[_witness.LiteWitness] = []

    def make(name: str = "witness.test/w1") -> _witness.LiteWitness:
        w = _witness.LiteWitness(tmp_path_factory.mktemp("witness"), name)
        made.append(w)
        return w.start()

    yield make
    for w in made:
        w.close()


# ----------------------------------------------------------------------------------------------
# Open Policy Agent (opa, built from github.com/open-policy-agent/opa with go)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def opa_bin():
    """The opa binary, built once into .cache (a failed build fails the test, never skips)."""
    reason = _opa.unavailable_reason()
    if reason is not None:
        _unavailable("opa", reason)
    try:
        return _opa.build()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        _unavailable("opa", f"cannot build it: {e}")


@pytest.fixture
def opa_server(opa_bin, tmp_path_factory):
    """``make(bundle=None, paths=(), config=None) -> OpaServer`` started; every one is stopped
    afterwards."""
    made: list[_opa.OpaServer] = []

    def make(bundle=None, paths=(), config=None) -> _opa.OpaServer:
        server = _opa.OpaServer(tmp_path_factory.mktemp("opa"), bundle=bundle, paths=paths,
                                config=config)
        made.append(server)
        server.start()
        _started.setdefault("opa", server.startup_seconds or 0.0)
        return server

    yield make
    for server in made:
        server.close()


# ----------------------------------------------------------------------------------------------
# A real model: SmolLM2-135M-Instruct on llama-cpp-python's OpenAI-compatible server
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory):
    """A running ``llama_cpp.server`` with SmolLM2 (built and downloaded once into .cache; a
    failed build fails the tests that need it, with the build's output)."""
    reason = _llm.unavailable_reason()
    if reason is not None:
        _unavailable("llm", reason)
    server = _llm.LlamaServer(tmp_path_factory.mktemp("llm"))
    t0 = time.monotonic()
    try:
        server.start()
    except (RuntimeError, OSError, TimeoutError, subprocess.TimeoutExpired) as e:
        _unavailable("llm", f"cannot build or start llama-cpp-python's server: {e}")
    _started.setdefault("llm", time.monotonic() - t0)
    yield server
    server.close()
