"""``GET /v1/log/verification`` with the app's lifespan running: the status is kept up to date by
a background thread, one full verification and then only what was appended since; the request
reads it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from domain.ports import Incoming, Source
from tachograph.contract.canonical import dumps
from tests.integration.api_support import Api, close_api, make_api, publish, workload


@pytest.fixture
def quiet(tmp_path) -> Iterator[Api]:
    """An API whose verification thread runs a round only when woken (after its first one)."""
    a = make_api(tmp_path, verify_interval_s=3600)
    yield a
    close_api(a)


def _split(events: list[dict[str, Any]], runs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The events of the first ``runs`` runs, and the others'."""
    first = sorted({e["run_id"] for e in events})[:runs]
    return [e for e in events if e["run_id"] in first], [e for e in events if e["run_id"] not in first]


def _status(api: Api) -> dict[str, Any]:
    r = api.client.get("/v1/log/verification", headers=api.auth("auditor"))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _caught_up(api: Api) -> dict[str, Any]:
    """The status once a round has looked at the ledger as it is now (the thread woken for it)."""
    assert api.services.verification is not None
    api.services.verification.refresh(60)
    return _status(api)


def test_an_entry_tampered_with_after_the_verified_point_fails_the_incremental_round(quiet: Api) -> None:
    before, after = _split(workload(runs=24), 18)
    publish(quiet, before)
    with quiet.client:
        first = _status(quiet)  # the first round: the whole ledger
        size = quiet.ledger.store.size()
        assert first["ok"] and first["kind"] == "full" and first["entries"] == size
        publish(quiet, after)
        target = size + 3
        with sqlite3.connect(quiet.ledger.store.path, isolation_level=None) as c:  # behind the API's back
            c.execute("UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), '\"seq\":', '\"seq\": ') "
                      "AS BLOB) WHERE idx = ?", (target,))
        assert _status(quiet)["entries"] == size  # nothing verified since: the thread sleeps
        broken = _caught_up(quiet)
        assert not broken["ok"] and broken["kind"] == "incremental" and broken["verified_from"] == size
        assert broken["position"] == target and "stored column" in broken["reason"]
        assert broken["entries"] == size and broken["ledger_size"] == quiet.ledger.store.size()
        assert "tacho_log_verification_ok 0.0" in quiet.client.get("/metrics").text
        quiet.ledger.checkpoint(force=True)  # a change: verified again, in full after a failure
        again = _caught_up(quiet)
        assert not again["ok"] and again["kind"] == "full" and again["position"] == target


def test_the_status_after_a_thousand_appends_answers_in_a_fraction_of_a_full_verification(quiet: Api) -> None:
    events = workload(runs=5200, seed=21)
    big, more = _split(events, 5000)
    for i in range(0, len(big), 10_000):  # straight into the ledger: the setup, not what is measured
        quiet.ledger.append([Incoming(dumps(e), Source("file", name="w", line=n))
                             for n, e in enumerate(big[i : i + 10_000])])
    with quiet.client:
        first = _status(quiet)
        assert first["ok"] and first["kind"] == "full" and first["entries"] == quiet.ledger.store.size()
        full_s = first["took_ms"] / 1000
        assert first["entries"] > 50_000 and full_s > 0
        publish(quiet, more[:1000])  # 1,000 appends over HTTP
        started = time.perf_counter()
        answer = _status(quiet)  # read, not computed: the thread has not run since
        request_s = time.perf_counter() - started
        assert answer["entries"] == first["entries"] and answer["ledger_size"] == first["entries"] + 1000
        caught = _caught_up(quiet)
        assert caught["ok"] and caught["kind"] == "incremental" and caught["entries"] == caught["ledger_size"]
        assert caught["verified_from"] == first["entries"]
        assert request_s < full_s / 5, (request_s, full_s)
        assert caught["took_ms"] / 1000 < full_s / 5, (caught["took_ms"], full_s)
        started = time.perf_counter()
        assert _status(quiet)["entries"] == caught["entries"]
        assert time.perf_counter() - started < full_s / 5


def test_without_its_lifespan_the_request_brings_the_status_up_to_date_itself(quiet: Api) -> None:
    before, after = _split(workload(runs=6), 4)
    publish(quiet, before)
    first = _status(quiet)
    assert first["ok"] and first["kind"] == "full" and not first["running"]
    publish(quiet, after)
    second = _status(quiet)
    assert second["ok"] and second["kind"] == "incremental" and second["entries"] == quiet.ledger.store.size()
