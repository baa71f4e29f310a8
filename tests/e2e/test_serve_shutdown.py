"""``tacho serve`` stops within seconds even while clients hold long polls open (OPA's bundle
poll waits up to 120 s, an agent's approval wait up to 30 s)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx

from api.cli_serve import SHUTDOWN_GRACE_S
from tests.cli_support import start_tacho, tacho
from tests.harness import free_port, wait_until

POLICY = Path(__file__).resolve().parents[1] / "policies" / "refunds.rego"


def _secret(data_dir: Path, role: str) -> str:
    out = tacho(data_dir, "apikey", "create", "--workspace", "default", "--role", role, "--json").stdout
    return str(json.loads(out)["secret"])


def test_serve_stops_within_its_grace_while_a_bundle_long_poll_is_open(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    tacho(data_dir, "policy", "publish", str(POLICY), "--activate")
    key = _secret(data_dir, "publisher")
    port = free_port()
    proc = start_tacho(data_dir, "serve", "--port", str(port), "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.communicate()
        try:
            return httpx.get(url + "/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 30, what="tacho serve up")
    auth = {"Authorization": f"Bearer {key}"}
    etag = httpx.get(url + "/v1/policy/bundle.tar.gz", headers=auth).headers["etag"]
    polled: dict[str, object] = {}

    def poll() -> None:
        try:
            polled["status"] = httpx.get(url + "/v1/policy/bundle.tar.gz", timeout=200,
                                         headers={**auth, "If-None-Match": etag, "Prefer": "wait=120"}
                                         ).status_code
        except httpx.HTTPError as e:
            polled["error"] = type(e).__name__

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    time.sleep(1.0)
    assert t.is_alive(), "the long poll is open"
    t0 = time.monotonic()
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert took < SHUTDOWN_GRACE_S + 5, f"tacho serve took {took:.1f}s to stop"
    assert proc.returncode in (0, -15), err
    t.join(10)
    assert polled, "the poll ended with the server (an answer or a closed connection)"
