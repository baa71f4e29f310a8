"""The price table: our models, genai-prices' bundled catalogue, an override file, unknown models."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from tachograph.errors import PricingError
from tachograph.prices import DEFAULT_PRICES, Price, PriceTable

AT = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)


def _catalogue_price(model: str, provider: str | None = None) -> tuple[Decimal, Decimal]:
    """genai-prices' own per-million input and output prices of a model at AT."""
    calc = calc_price(Usage(input_tokens=0, output_tokens=0), model, provider_id=provider,
                      genai_request_timestamp=AT)
    return calc.model_price.input_mtok, calc.model_price.output_mtok


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4.1-mini", "claude-3-5-haiku", "gpt-4.1"])
def test_hosted_models_are_priced_exactly_as_genai_prices_lists_them(model):
    inp, out = _catalogue_price(model)
    expected = (inp * 1234 + out * 567) / Decimal(1_000_000)
    cost = PriceTable().cost_or_none(model, 1234, 567, at=AT)
    assert isinstance(cost, Decimal)
    assert cost == expected.quantize(Decimal("1e-9"))
    assert PriceTable().known(model)


def test_gpt_4o_mini_costs_what_openai_charges():
    # $0.15 per million input tokens, $0.60 per million output tokens
    assert PriceTable().cost("gpt-4o-mini", 1000, 500, at=AT) == Decimal("0.000450000")


def test_the_cost_is_exact_to_nine_places_never_a_float():
    cost = PriceTable().cost("gpt-4o-mini", 1, 1, at=AT)
    assert cost == Decimal("0.00000075") and cost.as_tuple().exponent == -9
    assert PriceTable().cost("sim-small-v1", 3, 7) == Decimal("0.000004650")


def test_a_local_model_is_unknown_and_never_free():
    table = PriceTable()
    assert table.cost_or_none("smollm2-135m-instruct", 1000, 500, "openai-compatible", at=AT) is None
    assert not table.known("smollm2-135m-instruct")
    with pytest.raises(PricingError, match=r"smollm2-135m-instruct.*TACHO_PRICES"):
        table.cost("smollm2-135m-instruct", 1000, 500)


def test_our_simulated_models_keep_their_prices():
    table = PriceTable()
    assert set(DEFAULT_PRICES) == {"sim-small-v1", "sim-large-v2"}
    assert table.cost("sim-small-v1", 1_000_000, 1_000_000) == Decimal("0.75")
    assert table.cost("sim-large-v2", 1_000_000, 1_000_000, "simulated") == Decimal("12.5")


def test_the_override_file_prices_a_local_model_and_wins_over_the_catalogue(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text('{"smollm2-135m-instruct": {"input_per_m": "0.01", "output_per_m": 0.02},'
                    ' "gpt-4o-mini": {"input_per_m": 1, "output_per_m": "2"}}')
    table = PriceTable.from_file(path)
    assert table.cost("smollm2-135m-instruct", 1000, 1000) == Decimal("0.00003")
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000, "openai", at=AT) == Decimal("3")
    assert table.cost("sim-small-v1", 1_000_000, 0) == Decimal("0.15")  # defaults stay
    assert table.cost("gpt-4.1-mini", 1_000_000, 0, at=AT) == _catalogue_price("gpt-4.1-mini")[0]


@pytest.mark.parametrize("text, problem", [
    ('{"m": {"input_per_m": "0.1"}}', "'m' needs input_per_m and output_per_m"),
    ('{"m": {"input_per_m": "-1", "output_per_m": "1"}}', "≥ 0"),
    ('{"m": {"input_per_m": "lots", "output_per_m": "1"}}', "'m' needs"),
    ('{"m": {"input_per_m": true, "output_per_m": "1"}}', "'m' needs"),
    ('{"m": {"input_per_m": "NaN", "output_per_m": "1"}}', "'m' needs"),
    ('{"m": "0.1"}', "'m' needs"),
    ('["m"]', "must be a JSON object"),
    ("{not json", "cannot read price table"),
])
def test_a_bad_price_file_is_refused_naming_the_problem(tmp_path, text, problem):
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(PricingError, match=problem):
        PriceTable.from_file(path)


def test_a_missing_price_file_is_named(tmp_path):
    with pytest.raises(PricingError, match=r"cannot read price table .*nowhere\.json"):
        PriceTable.from_file(tmp_path / "nowhere.json")


def test_the_adapters_provider_is_preferred_when_the_catalogue_lists_the_model_there():
    table = PriceTable()
    cerebras = _catalogue_price("gpt-oss-120b", "cerebras")
    by_name = _catalogue_price("gpt-oss-120b")
    assert cerebras != by_name  # the same model, priced differently by two providers
    assert table.cost("gpt-oss-120b", 1_000_000, 0, "cerebras", at=AT) == cerebras[0]
    assert table.cost("gpt-oss-120b", 1_000_000, 0, at=AT) == by_name[0]


def test_an_unknown_provider_or_one_without_the_model_falls_back_to_the_model_name():
    table = PriceTable()
    expected = table.cost("claude-3-5-haiku", 1000, 1000, at=AT)
    assert table.cost("claude-3-5-haiku", 1000, 1000, "my-gateway", at=AT) == expected
    assert table.cost("claude-3-5-haiku", 1000, 1000, "openai-compatible", at=AT) == expected


def test_catalogue_prices_are_taken_at_the_time_of_the_call():
    # deepseek-chat is half price off-peak (16:30 to 00:30 UTC)
    table = PriceTable()
    peak = table.cost("deepseek-chat", 1_000_000, 1_000_000, at=datetime(2025, 6, 1, 10, tzinfo=UTC))
    off_peak = table.cost("deepseek-chat", 1_000_000, 1_000_000, at=datetime(2025, 6, 1, 17, tzinfo=UTC))
    assert off_peak * 2 == peak


def test_without_the_catalogue_only_fixed_prices_count():
    table = PriceTable({"local": Price(Decimal("1"), Decimal("2"))}, catalogue=False)
    assert table.cost_or_none("gpt-4o-mini", 10, 10) is None
    assert table.cost("local", 1_000_000, 1_000_000) == Decimal("3")


def test_the_old_import_path_still_works():
    from tachograph import PriceTable as Exported
    from tachograph.models import PriceTable as Old

    assert Old is PriceTable and Exported is PriceTable
