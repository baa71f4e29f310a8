"""Which models a replay may call: simulated ones, the models file, and the command line.

The models file (``TACHO_MODELS``, TOML or JSON, :func:`tachograph.models.load_model_configs`)
names OpenAI-compatible endpoints: base URL, the model as served, the environment variable that
holds the key, a price or ``free = true``, default params. The command line can add one more
(``--model NAME --base-url URL``) or price the candidate (``--model-price IN,OUT``,
``--model-free``). The HTTP API only ever uses the server's configuration: a request names a
model, never a URL.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replay.cache import ResponseCache
from tachograph.contract.canonical import loads
from tachograph.errors import ConfigError
from tachograph.models import (
    FREE,
    SIMULATED,
    HttpModelConfig,
    ModelRegistry,
    load_model_configs,
    parse_price_pair,
)
from tachograph.prices import Price, PriceTable


@dataclass(frozen=True)
class CandidateOptions:
    """The command line's say about the candidate model (all optional)."""

    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    price: str | None = None  # "IN,OUT", USD per million tokens
    free: bool = False
    params: Sequence[str] = ()  # KEY=VALUE, the value JSON when it parses


def price_table(prices_file: Path | None) -> PriceTable:
    """The price table: a price file over genai-prices' catalogue, or the catalogue alone."""
    return PriceTable.from_file(prices_file) if prices_file else PriceTable()


def configured_models(models_file: Path | None) -> dict[str, HttpModelConfig]:
    """The models file's models ({} without one)."""
    return load_model_configs(models_file) if models_file else {}


def _params(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-param takes KEY=VALUE (e.g. max_tokens=64), got {pair!r}")
        try:
            out[key.strip()] = loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def with_candidate(http: Mapping[str, HttpModelConfig], opts: CandidateOptions) -> dict[str, HttpModelConfig]:
    """The configured models with the command line's candidate added or adjusted."""
    out = dict(http)
    price: Price | None = None
    if opts.price is not None and opts.free:
        raise ConfigError("give --model-price or --model-free, not both")
    if opts.price is not None:
        price = parse_price_pair(opts.price)
    elif opts.free:
        price = FREE
    extra = (opts.base_url, opts.api_key_env, price, opts.params)
    if opts.model is None:
        if any(extra):
            raise ConfigError("--base-url, --api-key-env, --model-price, --model-free and --model-param "
                              "describe the candidate: give --model NAME too")
        return out
    name = opts.model
    cfg = out.get(name)
    if opts.base_url is not None:  # a model of its own, whatever the file says of NAME
        if not opts.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must be an http:// or https:// URL, got {opts.base_url!r}")
        cfg = HttpModelConfig(opts.base_url, name, opts.api_key_env)
    elif cfg is None and any(extra):
        where = "simulated" if name in SIMULATED else "not in the models file (TACHO_MODELS)"
        raise ConfigError(f"model {name!r} is {where}: --api-key-env, --model-price, --model-free and "
                          "--model-param apply to a model over HTTP (give --base-url or configure it)")
    if cfg is None:
        return out
    if opts.api_key_env is not None:
        cfg = dataclasses.replace(cfg, api_key_env=opts.api_key_env)
    if price is not None:
        cfg = dataclasses.replace(cfg, price=price)
    if opts.params:
        cfg = dataclasses.replace(cfg, params={**cfg.params, **_params(opts.params)})
    out[name] = cfg
    return out


def model_registry(http: Mapping[str, HttpModelConfig], prices: PriceTable) -> ModelRegistry:
    """A registry over the simulated and configured models (real time: these call out)."""
    return ModelRegistry(http, sleep=time.sleep, clock=time.monotonic, prices=prices)


def response_cache(data_dir: Path) -> ResponseCache:
    """The data directory's cache of real models' answers (``replays/cache.db``)."""
    return ResponseCache(data_dir / "replays" / "cache.db")


def describe_models(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Every model a replay can name, for forms and listings: name, kind, model as served,
    price (USD per million input/output tokens; ``free``; ``priced`` false when unknown).
    Never a key or a URL."""
    out: list[dict[str, Any]] = []
    for name in registry.names():
        cfg = registry.http.get(name)
        price = cfg.price if cfg is not None else registry.prices.prices.get(name)
        out.append({
            "name": name, "kind": "simulated" if cfg is None else "http",
            "model": name if cfg is None else cfg.model, "free": price == FREE,
            "price": None if price is None else {"input_per_m": price.input_per_m,
                                                 "output_per_m": price.output_per_m},
            "priced": registry.price_problem(name) is None,
        })
    return out
