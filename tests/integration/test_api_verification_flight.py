"""``GET /v1/log/verification``: concurrent calls for one ledger size share one computation, and
once the ledger was verified in full only what was appended since is verified."""

from __future__ import annotations

import threading

from tests.integration.api_support import Api, api, publish, workload

__all__ = ["api"]


def _verifications(a: Api, kind: str = "full") -> float:
    return a.services.metrics.verifications.labels(kind)._value.get()  # the counter behind /metrics


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
    assert _verifications(api) == 1 and all(x["kind"] == "full" for x in answers)
    assert 'tacho_log_verifications_total{kind="full"} 1.0' in api.client.get("/metrics").text
    api.client.get("/v1/runs", headers=h)  # an audited read: the ledger grew, so verify what is new
    again = api.client.get("/v1/log/verification", headers=h).json()
    assert again["ok"] and again["kind"] == "incremental" and again["entries"] == api.ledger.store.size()
    assert again["verified_from"] == answers[0]["entries"] and again["ledger_size"] == again["entries"]
    assert (_verifications(api), _verifications(api, "incremental")) == (1, 1)
