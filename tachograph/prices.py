"""Prices of model calls: exact US dollars from a call's token usage.

Where a price comes from, first match wins:

1. fixed per-model prices: an override file (``TACHO_PRICES``, :meth:`PriceTable.from_file`)
   over our simulated models (``sim-*``);
2. the price catalogue bundled with the ``genai-prices`` package (hosted providers' models), under
   the adapter's provider when the catalogue knows it and lists the model there, otherwise by the
   model name alone.

Nothing here touches the network: the catalogue is the package's bundled data (its update and
download functions are never called). A model that neither prices is *unknown*:
:meth:`PriceTable.cost_or_none` answers None, and the runtime records the call unpriced
(``priced: false``), never as free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tachograph.contract.canonical import loads
from tachograph.errors import PricingError

MILLION = Decimal(1_000_000)
NANO = Decimal("1e-9")


@dataclass(frozen=True)
class Price:
    """US dollars per one million input and output tokens."""

    input_per_m: Decimal
    output_per_m: Decimal

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact cost of a call with this price, rounded to 9 decimal places."""
        return ((self.input_per_m * input_tokens + self.output_per_m * output_tokens) / MILLION).quantize(NANO)


# our simulated models (tachograph.models.SIMULATED): the catalogue does not know them
DEFAULT_PRICES: dict[str, Price] = {
    "sim-small-v1": Price(Decimal("0.15"), Decimal("0.60")),
    "sim-large-v2": Price(Decimal("2.50"), Decimal("10.00")),
}


class PriceTable:
    """Per-call cost of a model: fixed prices first, then the genai-prices catalogue.

    Args:
        prices: fixed per-model prices (default: :data:`DEFAULT_PRICES`); they win over the
            catalogue, so a file can correct or add any model.
        catalogue: whether models without a fixed price are looked up in genai-prices' data.
    """

    def __init__(self, prices: Mapping[str, Price] | None = None, *, catalogue: bool = True) -> None:
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        self.catalogue = catalogue

    @staticmethod
    def from_file(path: Path, base: Mapping[str, Price] | None = None) -> PriceTable:
        """Load ``{"model": {"input_per_m": "0.4", "output_per_m": "1.6"}}`` over the defaults."""
        try:
            raw = loads(Path(path).read_bytes())
        except (OSError, ValueError) as e:
            raise PricingError(f"cannot read price table {path}: {e}") from e
        if not isinstance(raw, dict):
            raise PricingError(f"price table {path} must be a JSON object of model → prices")
        prices = dict(DEFAULT_PRICES if base is None else base)
        for model, p in raw.items():
            prices[model] = _file_price(path, model, p)
        return PriceTable(prices)

    def price(self, model: str) -> Price:
        """The fixed price of a model (ours or the file's); PricingError naming it if none."""
        try:
            return self.prices[model]
        except KeyError:
            raise PricingError(
                f"no fixed price for model {model!r}; fixed: {', '.join(sorted(self.prices))} "
                "(add it with a price table file, TACHO_PRICES)"
            ) from None

    def known(self, model: str, provider: str | None = None) -> bool:
        """Whether a call of ``model`` (served by ``provider``) can be priced."""
        return self.cost_or_none(model, 0, 0, provider) is not None

    def cost_or_none(self, model: str, input_tokens: int, output_tokens: int,
                     provider: str | None = None, *, at: datetime | None = None) -> Decimal | None:
        """Exact cost of one call (9 decimal places), or None when no price is known.

        ``at`` is when the call was made (catalogue prices can change over time and by time of
        day); None means now. Pass a recorded time where the answer must be reproducible.
        """
        fixed = self.prices.get(model)
        if fixed is not None:
            return fixed.cost(input_tokens, output_tokens)
        if not self.catalogue:
            return None
        return _catalogue_cost(model, provider, input_tokens, output_tokens, at)

    def cost(self, model: str, input_tokens: int, output_tokens: int,
             provider: str | None = None, *, at: datetime | None = None) -> Decimal:
        """Exact cost of one call in US dollars; PricingError when no price is known."""
        cost = self.cost_or_none(model, input_tokens, output_tokens, provider, at=at)
        if cost is None:
            raise PricingError(
                f"no price for model {model!r}"
                + (f" (provider {provider!r})" if provider else "")
                + ": neither a fixed price nor the genai-prices catalogue has it "
                "(add it with a price table file, TACHO_PRICES)"
            )
        return cost


def _file_price(path: Path, model: Any, p: Any) -> Price:
    """One model's entry of a price file, both prices exact and ≥ 0."""
    problem = f"price table {path}: model {model!r} needs input_per_m and output_per_m numbers ≥ 0"
    if not isinstance(p, dict):
        raise PricingError(problem)
    try:
        price = Price(_money(p["input_per_m"]), _money(p["output_per_m"]))
    except (KeyError, ArithmeticError) as e:
        raise PricingError(problem) from e
    if not (price.input_per_m.is_finite() and price.output_per_m.is_finite()) \
            or price.input_per_m < 0 or price.output_per_m < 0:
        raise PricingError(problem)
    return price


def _money(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise ArithmeticError(f"{value!r} is not a number")
    return Decimal(str(value))


def _catalogue_cost(model: str, provider: str | None, input_tokens: int, output_tokens: int,
                    at: datetime | None) -> Decimal | None:
    """The catalogue's price of a call: under ``provider`` if it lists the model, else by name."""
    from genai_prices import Usage, calc_price  # loaded on first use: ~0.2 s

    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    for provider_id in ([provider] if provider else []) + [None]:
        try:
            calc = calc_price(usage, model, provider_id=provider_id, genai_request_timestamp=at)
        except LookupError:  # provider or model not in the catalogue
            continue
        return Decimal(str(calc.total_price)).quantize(NANO)
    return None
