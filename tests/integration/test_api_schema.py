"""schemathesis against the service's own OpenAPI spec: no 500s, responses match the schema."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from projections.demo import analytics_path
from projections.projector import open_projector
from tests.integration.api_support import Api, make_api, publish, workload


def _role_for(path: str) -> str:
    if path in ("/v1/events", "/v1/traces", "/v1/opa/logs"):
        return "publisher"
    if path.startswith("/v1/analytics"):
        return "analyst"
    if path.startswith(("/v1/keys", "/v1/webhooks")):
        return "admin"
    if path.startswith("/v1/replays"):
        return "engineer"
    if path.startswith("/v1/halts"):
        return "admin"
    return "auditor"


def _config_exclusions(path: str) -> list:  # type: ignore[type-arg]
    """Schema-valid yet refused by configuration: ``by`` dimensions depend on the report, a
    replay's agent must be on the server's allow-list (its model, prompts and runs must exist), and
    a webhook URL must name a public http(s) host (and a workspace holds at most 10)."""
    configured = path.startswith(("/v1/analytics", "/v1/replays", "/v1/webhooks"))
    return [schemathesis.checks.positive_data_acceptance] if configured else []


def _fuzzed_api() -> Api:
    a = make_api(Path(tempfile.mkdtemp(prefix="tacho-schema-")))
    publish(a, workload(runs=3))
    a.ledger.checkpoint(force=True)
    with open_projector(a.ledger.store, analytics_path(a.data_dir)) as projector:
        projector.catch_up()
    return a


# schemathesis parametrizes at collection time, so the app is built when the module loads
FUZZED = _fuzzed_api()
schema = schemathesis.openapi.from_asgi("/openapi.json", FUZZED.app)


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    FUZZED.services.replays.close()
    FUZZED.ledger.store.close()
    shutil.rmtree(FUZZED.data_dir.parent, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_endpoint_answers_500_or_breaks_its_schema(case) -> None:  # type: ignore[no-untyped-def]
    # Allow on 405: FastAPI answers with the methods of the first matching route only;
    # negative data: a repeated scalar query parameter is read as its last value, not refused
    case.call_and_validate(headers=FUZZED.auth(_role_for(case.path)),
                           excluded_checks=[schemathesis.checks.unsupported_method,
                                            schemathesis.checks.allow_header_conformance,
                                            schemathesis.checks.negative_data_rejection,
                                            *_config_exclusions(case.path)])
