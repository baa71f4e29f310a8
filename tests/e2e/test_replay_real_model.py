"""What-if replays against a real model over HTTP: SmolLM2-135M-Instruct served by llama.cpp.

Triage runs are recorded live on the simulated model, then replayed with ``tacho replay`` (a real
subprocess) and over the API against the real model named in a models file. Checked here: the
real model's answers and tokens land in the replayed ``model.called`` events, a gate fails and
passes, an unpriced model is refused before anything is called, a second replay is answered
from the response cache without one request reaching the server (counted in the server's access
log), ``--no-cache`` calls it again, and the answers stay with the stored replay after the cache
is cleared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.bootstrap import build_ledger
from api.settings import Settings
from replay.demo import record_examples
from tachograph.contract.canonical import loads
from tests.cli_support import tacho
from tests.harness.llm import LlamaServer
from tests.integration.api_support import Api, close_api, make_api

AGENT = "examples.triage:triage"
RUNS = 4
PARAMS = {"max_tokens": 8, "temperature": 0}


def _models_file(path: Path, server: LlamaServer) -> Path:
    """``smollm2`` (free) and ``smollm2-unpriced`` (no price) at the real server."""
    path.write_text(
        f'[smollm2]\nbase_url = "{server.base_url}"\nmodel = "{server.model}"\nfree = true\n'
        f"params = {{ max_tokens = {PARAMS['max_tokens']}, temperature = {PARAMS['temperature']} }}\n\n"
        f'[smollm2-unpriced]\nbase_url = "{server.base_url}"\nmodel = "{server.model}"\n'
        f"params = {{ max_tokens = {PARAMS['max_tokens']}, temperature = {PARAMS['temperature']} }}\n"
    )
    return path


@pytest.fixture(scope="module")
def setup(llm_server: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A data dir with RUNS live triage runs (simulated model) and the models file."""
    root = tmp_path_factory.mktemp("real-model")
    data = root / "data"
    from examples import triage

    ledger = build_ledger(Settings(data_dir=data))
    record_examples(ledger, "acme", AGENT, triage.inputs(RUNS, salt="real"), prefix="real")
    yield data, _models_file(root / "models.toml", llm_server)


def _replay(data: Path, models: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = tacho(data, "replay", "--workflow", "ticket-triage", "--agent", AGENT, "--models", str(models),
                 "--model", "smollm2", *args, "--json", check=False)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, loads(proc.stdout)


def _settled(server: LlamaServer) -> int:
    """The server's count of chat completions once its access log has caught up."""
    time.sleep(0.3)
    return server.chat_requests()


def _replayed_calls(data: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    store = build_ledger(Settings(data_dir=data)).store
    calls = []
    for run in report["runs"]:
        for row in store.run_entries("acme", run["replay_run_id"]):
            event = loads(row.data)["event"]
            if event["type"] == "model.called":
                calls.append(event["data"])
    return calls


def _comparable(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "replay_run_id"} for r in report["runs"]]


def test_a_what_if_replay_calls_the_real_model_then_answers_from_the_cache(
    setup: tuple[Path, Path], llm_server: LlamaServer,
) -> None:
    data, models = setup
    before = _settled(llm_server)

    code, first = _replay(data, models, "--id", "real-1", "--max-outcome-change", "0")
    served = _settled(llm_server) - before
    calls = first["summary"]["after"]["model_calls"]
    assert first["mode"] == "what-if" and first["candidate"] == "model=smollm2"
    assert calls >= RUNS and served == calls == first["answers"]["fresh"]
    assert first["answers"]["cached"] == 0 and first["answers"]["kept"] >= 1
    # a 135M model does not answer with the bare category: outcomes change and the gate fails
    assert Decimal(str(first["summary"]["outcome_change_rate"])) > 0
    assert code == 1 and first["gate"]["failures"][0].startswith("outcome change rate")
    assert Decimal(str(first["summary"]["after"]["cost_usd"])) == 0  # declared free: 0, not unknown

    # the replayed model.called events carry the real model's answer and token counts
    replayed = _replayed_calls(data, first)
    assert len(replayed) == calls
    for call in replayed:
        assert call["model"] == llm_server.model and call["provider"] == "openai-compatible"
        assert call["input_tokens"] > 10 and 0 < call["output_tokens"] <= PARAMS["max_tokens"]
        assert Decimal(call["cost_usd"]) == 0 and "priced" not in call
    one = replayed[0]
    direct = httpx.post(f"{llm_server.base_url}/chat/completions", timeout=60, json={
        **PARAMS, "model": llm_server.model, "messages": one["request"]["messages"]}).json()
    assert one["response"]["content"] == direct["choices"][0]["message"]["content"]
    assert one["input_tokens"] == direct["usage"]["prompt_tokens"]
    assert one["output_tokens"] == direct["usage"]["completion_tokens"]

    # the same replay again: every answer from the cache, not one request to the server
    before = _settled(llm_server)
    code, second = _replay(data, models, "--id", "real-2", "--max-outcome-change", "100%")
    assert _settled(llm_server) == before
    assert second["answers"] == {"cached": calls, "fresh": 0, "kept": first["answers"]["kept"], "dropped": 0}
    assert code == 0 and second["gate"]["passed"] is True  # a gate that must pass passes
    assert second["summary"] == first["summary"] and _comparable(second) == _comparable(first)

    # --no-cache calls the model again (and refreshes the cache)
    code, third = _replay(data, models, "--id", "real-3", "--no-cache")
    assert _settled(llm_server) - before == calls == third["answers"]["fresh"]
    assert third["answers"]["cached"] == 0

    # the answers stay with the stored replay when the cache is cleared
    cleared = json.loads(tacho(data, "replay", "cache", "--clear", "--json").stdout)
    assert cleared["cleared"] >= 1 and cleared["entries"] == 0
    kept = loads(tacho(data, "replay", "show", "real-1", "--answers", "--json").stdout)
    assert len(kept["answers"]) == first["answers"]["kept"]
    assert {a["response"]["content"] for a in kept["answers"]} >= {one["response"]["content"]}
    assert all(a["request"]["body"]["model"] == llm_server.model and a["source"] == "model"
               and a["request"]["base_url"] == llm_server.base_url for a in kept["answers"])
    shown = tacho(data, "replay", "show", "real-2").stdout
    assert f"{calls} from the cache, 0 fresh" in shown


def test_a_model_with_no_price_is_refused_before_it_is_called(
    setup: tuple[Path, Path], llm_server: LlamaServer,
) -> None:
    data, models = setup
    before = _settled(llm_server)
    proc = tacho(data, "replay", "--workflow", "ticket-triage", "--agent", AGENT, "--models", str(models),
                 "--model", "smollm2-unpriced", "--id", "unpriced", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no price for model 'smollm2-unpriced'" in proc.stderr
    for way in ("--model-price IN,OUT", "--model-free", "TACHO_PRICES", "--allow-unpriced"):
        assert way in proc.stderr
    assert _settled(llm_server) == before
    assert not (data / "replays" / "unpriced.json").exists()

    # accepted explicitly: it runs, its calls are recorded unpriced (the cost is unknown, not 0)
    proc = tacho(data, "replay", "--workflow", "ticket-triage", "--agent", AGENT, "--models", str(models),
                 "--model", "smollm2-unpriced", "--allow-unpriced", "--id", "unpriced", "--json", check=False)
    report = loads(proc.stdout)
    after = report["summary"]["after"]
    assert after["cost_usd"] is None and after["unpriced_calls"] == after["model_calls"] >= RUNS
    assert all(c.get("priced") is False for c in _replayed_calls(data, report))

    # priced on the command line: the same model at a price
    proc = tacho(data, "replay", "--workflow", "ticket-triage", "--agent", AGENT, "--models", str(models),
                 "--model", "smollm2-unpriced", "--model-price", "0.10,0.40", "--id", "priced", "--json",
                 check=False)
    priced = loads(proc.stdout)["summary"]["after"]
    assert priced["unpriced_calls"] == 0 and Decimal(str(priced["cost_usd"])) > 0


@pytest.fixture
def api(tmp_path: Path, llm_server: LlamaServer) -> Iterator[Api]:
    a = make_api(tmp_path, models=_models_file(tmp_path / "models.toml", llm_server))
    yield a
    close_api(a)


def _finished(a: Api, replay_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        body: dict[str, Any] = loads(a.client.get(f"/v1/replays/{replay_id}", headers=a.auth("engineer")).content)
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_the_api_replays_against_a_configured_model_and_never_a_requested_url(
    api: Api, llm_server: LlamaServer,
) -> None:
    from examples import triage

    record_examples(api.ledger, "acme", AGENT, triage.inputs(3, salt="api"), prefix="api")
    headers = api.auth("engineer")
    before = _settled(llm_server)

    # a request can name a model, never an endpoint (the server would call any address: SSRF)
    r = api.client.post("/v1/replays", headers=headers, json={
        "agent": AGENT, "model": "smollm2", "base_url": "http://127.0.0.1:9/v1"})
    assert r.status_code == 422 and "base_url" in r.text
    r = api.client.post("/v1/replays", headers=headers, json={"agent": AGENT, "model": "smollm2-unpriced"})
    assert r.status_code == 422 and "no price for model 'smollm2-unpriced'" in r.json()["message"]
    assert "allow_unpriced" in r.json()["message"]
    assert _settled(llm_server) == before

    r = api.client.post("/v1/replays", headers=headers, json={
        "agent": AGENT, "workflow": "ticket-triage", "model": "smollm2", "max_outcome_change": 0})
    assert r.status_code == 202, r.text
    first = _finished(api, r.json()["replay_id"])
    assert first["status"] == "finished", first["error"]
    calls = first["report"]["summary"]["after"]["model_calls"]
    assert calls >= 3 and first["report"]["answers"]["fresh"] == calls == _settled(llm_server) - before
    assert first["passed"] is False  # the real model changes outcomes

    r = api.client.post("/v1/replays", headers=headers, json={
        "agent": AGENT, "workflow": "ticket-triage", "model": "smollm2", "max_outcome_change": 0})
    second = _finished(api, r.json()["replay_id"])
    assert second["report"]["answers"]["cached"] == calls and second["report"]["answers"]["fresh"] == 0
    assert _settled(llm_server) - before == calls
    assert second["report"]["summary"] == first["report"]["summary"]


def _steps(data: Path, models: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = tacho(data, "replay", "--steps", "--workflow", "ticket-triage", "--models", str(models),
                 "--model", "smollm2", *args, "--json", check=False)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, loads(proc.stdout)


def test_a_step_replay_sends_the_recorded_requests_to_the_real_model_then_answers_from_the_cache(
    setup: tuple[Path, Path], llm_server: LlamaServer,
) -> None:
    data, models = setup
    before = _settled(llm_server)
    code, first = _steps(data, models, "--id", "steps-1", "--max-response-change", "0")
    served = _settled(llm_server) - before
    summary = first["summary"]
    calls = summary["replayed_calls"]
    assert first["mode"] == "steps" and calls >= RUNS and summary["unreplayable_calls"] == 0
    # every request went to the server once (a request asked twice, by two runs, is answered once)
    assert served == first["answers"]["fresh"] > 0
    assert first["answers"]["fresh"] + first["answers"]["cached"] == calls
    # the recordings answered with the simulated model; SmolLM2 answers differently: the gate fails
    assert Decimal(str(summary["response_change_rate"])) > 0
    assert code == 1 and any("response change" in f for f in first["gate"]["failures"])
    code_pass, passed = _steps(data, models, "--id", "steps-2", "--max-response-change", "1")
    assert code_pass == 0 and passed["gate"]["passed"]
    # steps-2 asked the same requests: all from the cache, none reached the server
    assert passed["answers"] == {**passed["answers"], "cached": calls, "fresh": 0}
    assert _settled(llm_server) - before == served
    assert [r["calls"] for r in passed["runs"]] == [r["calls"] for r in first["runs"]]
