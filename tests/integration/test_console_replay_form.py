"""The console's replay form: lists the models the server knows (simulated and configured, with
their price), starts a replay of the person's workspace, and refuses an unpriced model."""

from __future__ import annotations

import html
import re
from pathlib import Path

from replay.demo import record_examples
from replay.store import ReplayReports
from tests.integration.api_support import Api, close_api, make_api

AGENT = "examples.triage:triage"


def _sign_in(a: Api, role: str) -> str:
    """Sign the test client in; the session's CSRF token (from the replays page)."""
    page = a.client.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = a.client.post("/console/login", data={"api_key": a.secrets[role], "csrf": token},
                      follow_redirects=False)
    assert r.status_code == 303, r.text
    page = a.client.get("/console/replays")
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def test_the_replay_form_lists_configured_models_and_starts_a_replay(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[local]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "smollm2"\nfree = true\n\n'
                      '[paid]\nbase_url = "http://127.0.0.1:9/v1"\n'
                      'price = { input_per_m = "0.5", output_per_m = "1.5" }\n\n'
                      '[mystery]\nbase_url = "http://127.0.0.1:9/v1"\n')
    a = make_api(tmp_path, models=models)
    try:
        from examples import triage

        record_examples(a.ledger, "acme", AGENT, triage.inputs(3, salt="form"), prefix="form")
        csrf = _sign_in(a, "engineer")
        page = html.unescape(a.client.get("/console/replays").text)
        for option in ("local (http, smollm2, free)", "paid (http, $0.5/$1.5 per M tokens)",
                       "mystery (http, no price)", "sim-large-v2 (simulated, $2.50/$10.00 per M tokens)"):
            assert option in page
        assert "127.0.0.1:9" not in page  # endpoints stay server-side
        assert f'<option>{AGENT}</option>' in page

        refused = a.client.post("/console/replays", data={"csrf": csrf, "agent": AGENT, "model": "mystery"})
        assert refused.status_code == 200 and "no price for model &#39;mystery&#39;" in refused.text

        r = a.client.post("/console/replays", data={"csrf": csrf, "agent": AGENT, "model": "sim-large-v2",
                                                    "limit": "2", "max_outcome_change": "0.5"},
                          follow_redirects=False)
        assert r.status_code == 303 and "started" in r.headers["location"]
        a.services.replays.wait(60)
        stored = ReplayReports(a.data_dir / "replays").list()
        assert [(s["runs"], s["candidate"]) for s in stored] == [(2, "model=sim-large-v2")]
        assert stored[0]["replay_id"] in a.client.get("/console/replays").text
        assert a.client.post("/console/replays", data={"csrf": "forged", "agent": AGENT}).status_code == 403
    finally:
        close_api(a)


def test_only_people_who_may_replay_see_the_form_or_post_it(tmp_path: Path) -> None:
    a = make_api(tmp_path)
    try:
        page = a.client.get("/console/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        a.client.post("/console/login", data={"api_key": a.secrets["auditor"], "csrf": token})
        assert a.client.get("/console/replays").status_code == 403
        assert a.client.post("/console/replays", data={"csrf": token, "agent": AGENT}).status_code == 403
        assert a.services.replays.jobs == {}
    finally:
        close_api(a)
