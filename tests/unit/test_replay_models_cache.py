"""Configured models (models file, command line), their prices, the refusal of unpriced models
before anything is called, and the response cache of real models' answers."""

from __future__ import annotations

import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from api.model_config import CandidateOptions, describe_models, with_candidate
from replay.cache import CachedModels, ReplayAnswers, ResponseCache, request_key
from replay.demo import record_examples
from replay.engine import ReplayConfig, check_prices, run_replay
from replay.errors import UnpricedModelError
from replay.history import load_runs
from replay.store import ReplayReports
from tachograph.agents import load_agent
from tachograph.contract.canonical import dumps
from tachograph.errors import ConfigError, PricingError
from tachograph.models import (
    FREE,
    ChatRequest,
    ChatResponse,
    HttpModelConfig,
    ModelRegistry,
    Price,
    call_cost,
    load_model_configs,
)
from tests.factories import make_ledger

AGENT = "examples.triage:triage"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_models_file_in_toml_or_json_names_endpoints_prices_and_params(tmp_path: Path) -> None:
    toml = _write(tmp_path / "models.toml", """
[local]
base_url = "http://127.0.0.1:8080/v1"
model = "smollm2-135m-instruct"
free = true
params = { max_tokens = 16, temperature = 0 }

[hosted]
base_url = "https://llm.example/v1"
api_key_env = "LLM_KEY"
price = { input_per_m = "0.15", output_per_m = 0.6 }
timeout_s = 20
""")
    configs = load_model_configs(toml)
    assert configs["local"] == HttpModelConfig("http://127.0.0.1:8080/v1", "smollm2-135m-instruct", None,
                                               price=FREE, params={"max_tokens": 16, "temperature": 0})
    assert configs["local"].free and not configs["hosted"].free
    assert configs["hosted"].model == "hosted" and configs["hosted"].api_key_env == "LLM_KEY"
    assert configs["hosted"].price == Price(Decimal("0.15"), Decimal("0.6")) and configs["hosted"].timeout_s == 20
    json_file = _write(tmp_path / "models.json", '{"hosted": {"base_url": "https://llm.example/v1", '
                       '"price": {"input_per_m": 0.15, "output_per_m": "0.6"}}}')
    assert load_model_configs(json_file)["hosted"].price == configs["hosted"].price


@pytest.mark.parametrize(("entry", "problem"), [
    ('model = "x"', "needs base_url"),
    ('base_url = "ftp://host/v1"', "needs base_url"),
    ('base_url = "http://h/v1"\nfree = true\nprice = { input_per_m = 1, output_per_m = 1 }', "not both"),
    ('base_url = "http://h/v1"\nprice = { input_per_m = -1, output_per_m = 1 }', "numbers ≥ 0"),
    ('base_url = "http://h/v1"\nprice = { input = 1 }', "exactly input_per_m and output_per_m"),
    ('base_url = "http://h/v1"\nkey = "sk-..."', "unknown setting(s) key"),
    ('base_url = "http://h/v1"\ntimeout_s = 0', "timeout_s must be > 0"),
])
def test_a_bad_models_file_entry_is_named_with_its_problem(tmp_path: Path, entry: str, problem: str) -> None:
    path = _write(tmp_path / "m.toml", f"[bad]\n{entry}\n")
    with pytest.raises((ConfigError, PricingError)) as e:
        load_model_configs(path)
    assert str(path) in str(e.value) and "'bad'" in str(e.value) and problem in str(e.value)


def test_the_command_line_adds_or_prices_the_candidate_and_refuses_what_does_not_apply() -> None:
    file = {"local": HttpModelConfig("http://127.0.0.1:8080/v1", "smol")}
    priced = with_candidate(file, CandidateOptions("local", price="0.1,0.4", params=("max_tokens=8", "stop=END")))
    assert priced["local"].price == Price(Decimal("0.1"), Decimal("0.4"))
    assert priced["local"].params == {"max_tokens": 8, "stop": "END"} and priced["local"].model == "smol"
    added = with_candidate({}, CandidateOptions("gpt-x", base_url="https://h/v1", api_key_env="K", free=True))
    assert added["gpt-x"] == HttpModelConfig("https://h/v1", "gpt-x", "K", price=FREE)
    for opts, problem in [
        (CandidateOptions("sim-large-v2", free=True), "is simulated"),
        (CandidateOptions("nowhere", price="1,2"), "not in the models file"),
        (CandidateOptions(None, base_url="http://h/v1"), "give --model NAME too"),
        (CandidateOptions("local", price="1,2", free=True), "not both"),
        (CandidateOptions("local", price="1"), "IN,OUT"),
        (CandidateOptions("x", base_url="h:8080"), "http:// or https://"),
        (CandidateOptions("local", params=("max_tokens",)), "KEY=VALUE"),
    ]:
        with pytest.raises((ConfigError, PricingError)) as e:
            with_candidate(file, opts)
        assert problem in str(e.value), (opts, e.value)


def test_a_configured_price_belongs_to_its_entry_even_when_two_serve_one_model_name() -> None:
    models = ModelRegistry({
        "local": HttpModelConfig("http://127.0.0.1:1/v1", "llama-3", price=FREE),
        "hosted": HttpModelConfig("https://h/v1", "llama-3", price=Price(Decimal(1), Decimal(2))),
        "unpriced": HttpModelConfig("http://127.0.0.1:2/v1", "llama-3"),
    }, sleep=lambda s: None, clock=lambda: 0.0)
    assert call_cost(models.prices, models.get("local"), 1_000_000, 1_000_000) == 0
    assert call_cost(models.prices, models.get("hosted"), 1_000_000, 1_000_000) == 3
    assert call_cost(models.prices, models.get("unpriced"), 1_000_000, 1_000_000) is None
    assert models.price_problem("local") is None and models.price_problem("hosted") is None
    problem = models.price_problem("unpriced")
    assert problem is not None and "'unpriced' (served as 'llama-3')" in problem
    listed = {m["name"]: m for m in describe_models(models)}
    assert listed["local"]["free"] and listed["hosted"]["price"] == {"input_per_m": 1, "output_per_m": 2}
    assert listed["unpriced"]["priced"] is False and listed["sim-large-v2"]["kind"] == "simulated"
    assert "base_url" not in listed["hosted"] and "api_key_env" not in listed["hosted"]


def test_a_replay_on_an_unpriced_model_is_refused_before_anything_is_called(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "ledger.db")
    from examples import triage

    record_examples(ledger, "acme", AGENT, triage.inputs(3, salt="u"), prefix="u")
    runs = load_runs(ledger.store, workflow="ticket-triage")
    sleeps: list[float] = []
    # nothing listens on port 9: a call would fail after retries (and sleep between them)
    models = ModelRegistry({"unpriced": HttpModelConfig("http://127.0.0.1:9/v1", "m", max_retries=1)},
                           sleep=sleeps.append, clock=lambda: 0.0)
    config = ReplayConfig("rp-u", "2026-01-01T00:00:00Z", candidate_model="unpriced")
    size = ledger.store.size()
    with pytest.raises(UnpricedModelError) as e:
        run_replay(runs, load_agent(AGENT), config, models, ledger=ledger)
    assert "no price for model 'unpriced'" in str(e.value) and "nothing was called" in str(e.value)
    assert sleeps == [] and ledger.store.size() == size
    # fidelity calls no model: nothing to price
    check_prices(runs, load_agent(AGENT), ReplayConfig("rp-f", "2026-01-01T00:00:00Z"), models)


class Counting:
    """A local model that says what it sends (so it is cacheable) and counts its calls."""

    name, provider = "counted", "test"

    def __init__(self) -> None:
        self.calls = 0

    def canonical_request(self, request: ChatRequest) -> bytes:
        return dumps({"base_url": "local", "body": {"model": self.name, "messages": list(request.messages),
                                                     **dict(request.params)}})

    def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        return ChatResponse(f"answer {self.calls}", 7, 3, Decimal("12.345"), "stop",
                            [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])


def test_the_cache_answers_a_repeated_request_exactly_and_refresh_calls_again(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "replays" / "cache.db")
    assert not (tmp_path / "replays").exists()  # made on first use
    inner = Counting()
    registry = ModelRegistry()
    registry.register(inner)
    request = ChatRequest("counted", ({"role": "user", "content": "hi"},), {"max_tokens": 4})

    answers = ReplayAnswers()
    first = CachedModels(registry, cache, answers).get("counted").complete(request)
    again = CachedModels(registry, cache, answers).get("counted").complete(request)
    assert inner.calls == 1 and again == first and again.latency_ms == Decimal("12.345")
    assert stat.S_IMODE((tmp_path / "replays" / "cache.db").stat().st_mode) == 0o600
    other = CachedModels(registry, cache, answers).get("counted").complete(
        ChatRequest("counted", request.messages, {"max_tokens": 5}))  # other params: another request
    assert inner.calls == 2 and other.content == "answer 2"
    assert answers.summary() == {"cached": 1, "fresh": 2, "kept": 2, "dropped": 0}

    refreshed = ReplayAnswers()
    new = CachedModels(registry, cache, refreshed, refresh=True).get("counted").complete(request)
    assert inner.calls == 3 and new.content == "answer 3" and refreshed.summary()["fresh"] == 1
    assert cache.get(request_key(inner.canonical_request(request))) == new  # the cache was refreshed
    assert CachedModels(registry, cache, refreshed).get("sim-small-v1") is registry.get("sim-small-v1")
    assert cache.stats()["entries"] == 2 and cache.clear() == 2 and cache.stats()["entries"] == 0
    cache.close()


def test_the_answers_a_replay_used_are_kept_bounded_beside_its_report(tmp_path: Path) -> None:
    answers = ReplayAnswers(max_kept=2)
    for i in range(4):
        answers.add(f"k{i % 3}", dumps({"body": {"i": i}}), ChatResponse("x" * i, 1, 1, Decimal(1)),
                    "model" if i < 3 else "cache")
    assert answers.summary() == {"cached": 1, "fresh": 3, "kept": 2, "dropped": 1}
    reports = ReplayReports(tmp_path / "replays")
    report: dict[str, Any] = {"replay_id": "rp-1", "created": "2026-01-01T00:00:00Z", "mode": "what-if",
                              "agent": AGENT, "candidate": "model=x", "gate": {"passed": True},
                              "summary": {"runs": 0, "outcome_change_rate": None}, "runs": []}
    reports.save(report, answers)
    kept = reports.answers("rp-1")
    assert [a["key"] for a in kept["answers"]] == ["k0", "k1"] and kept["dropped"] == 1
    assert stat.S_IMODE((tmp_path / "replays" / "answers" / "rp-1.json").stat().st_mode) == 0o600
    assert [r["replay_id"] for r in reports.list()] == ["rp-1"]  # the answers are not a report
    reports.save({**report, "replay_id": "rp-2"})
    with pytest.raises(Exception, match="kept no model answers"):
        reports.answers("rp-2")
    with pytest.raises(Exception, match="no replay 'rp-3'"):
        reports.answers("rp-3")
