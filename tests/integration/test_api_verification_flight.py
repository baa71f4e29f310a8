"""``GET /v1/log/verification``: concurrent calls for one ledger size share one computation."""

from __future__ import annotations

import threading

from tests.integration.api_support import Api, api, publish, workload

__all__ = ["api"]


def _verifications(a: Api) -> float:
    return a.services.metrics.verifications._value.get()  # the counter behind /metrics


def test_concurrent_verification_calls_share_one_computation(api: Api) -> None:
    publish(api, workload(runs=300))
    api.ledger.checkpoint(force=True)
    h = api.auth("auditor")
    start = threading.Barrier(8)
    answers: list[dict] = []

    def call() -> None:
        start.wait()
        r = api.client.get("/v1/log/verification", headers=h)
        assert r.status_code == 200, r.text
        answers.append(r.json())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 8 and all(x["ok"] and x["entries"] == api.ledger.store.size() for x in answers)
    assert _verifications(api) == 1
    assert "tacho_log_verifications_total 1.0" in api.client.get("/metrics").text
    api.client.get("/v1/runs", headers=h)  # an audited read: the ledger grew, so verify again
    assert api.client.get("/v1/log/verification", headers=h).json()["ok"]
    assert _verifications(api) == 2
