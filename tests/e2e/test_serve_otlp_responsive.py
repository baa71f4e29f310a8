"""`tacho serve` keeps answering /healthz while it decodes a large OTLP/JSON export (issue 13,
item 6): the export is parsed off the event loop."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import orjson

from tests.cli_support import start_tacho, tacho


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _big_export(spans: int = 4_000, attrs: int = 40) -> bytes:
    """An OTLP/JSON export of about 14 MiB: spans of one trace with many attributes (unmapped)."""
    trace = "ab" * 16
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace, "spanId": f"{n + 1:016x}", "name": f"step {n}",
            "startTimeUnixNano": "1767225600000000000", "endTimeUnixNano": "1767225601000000000",
            "attributes": [{"key": f"app.attr.{k}", "value": {"stringValue": "v" * 40}}
                           for k in range(attrs)],
        } for n in range(spans)]}],
    }]}
    return orjson.dumps(body)


def test_healthz_answers_while_a_large_otlp_json_export_is_decoded(tmp_path: Path) -> None:
    secret = json.loads(tacho(tmp_path, "apikey", "create", "--workspace", "acme", "--role",
                              "publisher", "--json").stdout)["secret"]
    port = _free_port()
    proc = start_tacho(tmp_path, "serve", "--port", str(port), "--log-level", "warning")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "tacho serve did not start"
            time.sleep(0.1)

        body = _big_export()
        assert 13 * 2**20 < len(body) < 16 * 2**20
        sent = threading.Event()
        result: dict[str, object] = {}

        def chunks():
            for i in range(0, len(body), 1 << 20):
                yield body[i : i + (1 << 20)]
            sent.set()  # httpx asks for more only after writing the last chunk

        def export() -> None:
            r = httpx.post(f"{base}/v1/traces", content=chunks(), timeout=120, headers={
                "Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
            result["status"] = r.status_code

        worker = threading.Thread(target=export)
        worker.start()
        assert sent.wait(60)
        answered = 0  # /healthz round trips completed after the upload, before the export's answer
        with httpx.Client(base_url=base, timeout=60) as client:
            while worker.is_alive():
                r = client.get("/healthz")
                if worker.is_alive():
                    assert r.status_code == 200
                    answered += 1
        worker.join()
        assert result["status"] == 200
        # decoding on the event loop stalled every /healthz until the export was done
        assert answered >= 5, answered
    finally:
        proc.terminate()
        proc.wait(20)
