"""Model adapters behind one interface: request → response, usage and exact Decimal cost.

Two kinds: :class:`OpenAIChatModel`, the OpenAI-compatible chat-completions protocol over HTTP
(vLLM, Ollama, hosted providers), and :class:`SimulatedModel`, deterministic local models
(``sim-*``) whose answers depend only on the request content and the model name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tachograph.contract.canonical import dumps, loads
from tachograph.errors import (
    ConfigError,
    ModelAuthError,
    ModelRequestError,
    ModelResponseError,
    ModelUnavailableError,
    PricingError,
    UnknownModelError,
)
from tachograph.prices import DEFAULT_PRICES as DEFAULT_PRICES  # moved; old imports keep working
from tachograph.prices import Price as Price
from tachograph.prices import PriceTable as PriceTable

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completions request: model, messages ({role, content}) and extra params."""

    model: str
    messages: tuple[Mapping[str, Any], ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> bytes:
        """Canonical bytes of the request (what simulated models hash)."""
        return dumps({"model": self.model, "messages": list(self.messages), "params": dict(self.params)})


@dataclass(frozen=True)
class ChatResponse:
    """One model answer with its usage."""

    content: str
    input_tokens: int
    output_tokens: int
    latency_ms: Decimal
    finish_reason: str | None = "stop"
    tool_calls: list[Any] | None = None


class ModelAdapter(Protocol):
    """What the runtime needs from a model: a name, a provider, and one call."""

    @property
    def name(self) -> str:
        """The model name (as priced and recorded)."""
        ...

    @property
    def provider(self) -> str:
        """Who serves it (recorded as ``provider``)."""
        ...

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Send one request and return the answer (raises ModelError subclasses)."""
        ...


def count_tokens(text: str) -> int:
    """A rough, deterministic token count (about four characters a token)."""
    return len(text) // 4 + 1


_CHOOSE = re.compile(r"^CHOOSE:\s*(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class SimulatedModel:
    """A deterministic local model: the answer is a pure function of model name and request.

    A request whose last message has a line ``CHOOSE: a | b | c`` gets one option back; with
    probability ``skill`` (decided by hashing the request) it is an option named in the text,
    else a hash-chosen one. Anything else gets a short deterministic sentence.
    """

    name: str
    skill: Decimal
    base_latency_ms: int
    ms_per_token: int
    provider: str = "simulated"

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer deterministically (no network, no clock, no randomness)."""
        digest = hashlib.sha256(self.name.encode() + b"\0" + request.key()).digest()
        u = Decimal(int.from_bytes(digest[:8], "big")) / Decimal(2**64)
        last = str(request.messages[-1].get("content", "")) if request.messages else ""
        match = _CHOOSE.search(last)
        if match:
            options = [o.strip() for o in match.group(1).split("|") if o.strip()]
            text = _CHOOSE.sub("", last).lower()
            named = [o for o in options if re.search(rf"\b{re.escape(o.lower())}\b", text)]
            if named and u < self.skill:
                content = named[0]
            else:
                content = options[digest[8] % len(options)] if options else ""
        else:
            words = re.findall(r"[A-Za-z]+", last)[:6]
            content = f"{' '.join(words)} ({self.name} note {digest[:3].hex()})".strip()
        tin = sum(count_tokens(str(m.get("content", ""))) + 4 for m in request.messages)
        tout = count_tokens(content)
        return ChatResponse(
            content=content,
            input_tokens=tin,
            output_tokens=tout,
            latency_ms=Decimal(self.base_latency_ms + self.ms_per_token * tout),
        )


SIMULATED: dict[str, SimulatedModel] = {
    "sim-small-v1": SimulatedModel("sim-small-v1", Decimal("0.70"), 80, 2),
    "sim-large-v2": SimulatedModel("sim-large-v2", Decimal("0.97"), 200, 6),
}

Sleep = Callable[[float], None]
Monotonic = Callable[[], float]


class OpenAIChatModel:
    """An OpenAI-compatible ``POST {base_url}/chat/completions`` client with retries.

    Retries 429, 5xx, timeouts and connection errors with exponential backoff (honouring a
    numeric ``Retry-After``); other errors are raised at once with a clear message. The API key
    is read from the environment variable named in the config and never logged or shown.
    ``params`` are defaults sent with every request (e.g. ``max_tokens``); a request's own
    params win over them.
    """

    provider = "openai-compatible"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None,
        sleep: Sleep,
        clock: Monotonic,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        params: Mapping[str, Any] | None = None,
        price: Price | None = None,
    ) -> None:
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.params = dict(params or {})
        self.price = price  # its own configured price (None: the price table's)
        self.api_key_env = api_key_env
        self.sleep = sleep
        self.clock = clock
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        import httpx  # here, not at the top: the API server imports this module and never calls out

        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    def __repr__(self) -> str:
        return f"OpenAIChatModel(base_url={self.base_url!r}, model={self.name!r}, api_key_env={self.api_key_env!r})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ModelAuthError(
                    f"environment variable {self.api_key_env} (the API key for {self.name}) is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("retry-after", "")
            if after.replace(".", "", 1).isdigit():
                return min(float(after), self.max_backoff_s)
        return float(min(self.backoff_s * (2**attempt), self.max_backoff_s))

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body this client sends for ``request``: default params, the request's params,
        the model as served and the messages."""
        return {**self.params, **dict(request.params), "model": self.name,
                "messages": list(request.messages)}

    def canonical_request(self, request: ChatRequest) -> bytes:
        """Canonical bytes of what is sent and where (base URL and body; never the key): equal
        bytes mean the same request to the same model, e.g. as a response cache's key."""
        return dumps({"base_url": self.base_url, "body": self.request_body(request)})

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Call the endpoint (with retries) and parse the first choice and the usage."""
        import httpx  # loaded by __init__ already

        body = dumps(self.request_body(request))
        headers = self._headers()
        url = f"{self.base_url}/chat/completions"
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            started = self.clock()
            response: httpx.Response | None = None
            try:
                response = self._client.post(url, content=body, headers=headers)
            except httpx.TimeoutException:
                last_problem = "timed out"
            except httpx.TransportError as e:
                last_problem = f"connection failed ({type(e).__name__})"
            else:
                status = response.status_code
                if status < 300:
                    elapsed = Decimal(str(round((self.clock() - started) * 1000, 3)))
                    return _parse_completion(response, self.name, elapsed)
                if status in (401, 403):
                    raise ModelAuthError(
                        f"{self.name} at {self.base_url}: HTTP {status}, credentials refused "
                        f"(check {self.api_key_env or 'the API key'})"
                    )
                if status != 429 and status < 500:
                    raise ModelRequestError(
                        f"{self.name} at {self.base_url}: HTTP {status}: {_error_text(response)}"
                    )
                last_problem = f"HTTP {status}: {_error_text(response)}"
            if attempt < self.max_retries:
                self.sleep(self._delay(attempt, response))
        raise ModelUnavailableError(
            f"{self.name} at {self.base_url}: gave up after {self.max_retries + 1} attempts; "
            f"last: {last_problem}"
        )


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))[:200]
    return str(data)[:200]


def _parse_completion(response: httpx.Response, model: str, latency_ms: Decimal) -> ChatResponse:
    try:
        data = loads(response.content)
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        tin = int(usage.get("prompt_tokens", 0))
        tout = int(usage.get("completion_tokens", 0))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ModelResponseError(
            f"{model}: not a chat-completions response ({type(e).__name__}: {e})"
        ) from e
    return ChatResponse(
        content=message.get("content") or "",
        input_tokens=tin,
        output_tokens=tout,
        latency_ms=latency_ms,
        finish_reason=choice.get("finish_reason"),
        tool_calls=message.get("tool_calls") or None,
    )


FREE = Price(Decimal(0), Decimal(0))


@dataclass(frozen=True)
class HttpModelConfig:
    """Configuration of one OpenAI-compatible model: where, which, the key's env var, its price.

    ``price`` (USD per million input/output tokens; :data:`FREE` for a self-hosted model
    declared free) wins over the price table for this model; None leaves it to the table.
    ``params`` are default request parameters (e.g. ``{"max_tokens": 64}``).
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    price: Price | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def free(self) -> bool:
        """Whether the model is declared free (priced at 0)."""
        return self.price == FREE


def parse_price_pair(text: str) -> Price:
    """``"IN,OUT"`` (USD per million input and output tokens) as a Price; PricingError if not."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise PricingError(f"a price is IN,OUT in USD per million input and output tokens, got {text!r}")
    return _config_price(parts[0], parts[1], f"price {text!r}")


def _config_price(inp: Any, out: Any, where: str) -> Price:
    problem = f"{where}: input and output prices must be numbers ≥ 0 (USD per million tokens)"
    try:
        if isinstance(inp, bool) or isinstance(out, bool):
            raise InvalidOperation
        price = Price(Decimal(str(inp)), Decimal(str(out)))
    except (InvalidOperation, ValueError):
        raise PricingError(problem) from None
    if not (price.input_per_m.is_finite() and price.output_per_m.is_finite()) \
            or price.input_per_m < 0 or price.output_per_m < 0:
        raise PricingError(problem)
    return price


_CONFIG_KEYS = {"base_url", "model", "api_key_env", "timeout_s", "max_retries", "price", "free", "params"}


def load_model_configs(path: Path) -> dict[str, HttpModelConfig]:
    """Read a models file (TOML or JSON: a table per model name) into configs.

    Each entry: ``base_url`` (http/https, required), ``model`` (as the server names it; default
    the entry's name), ``api_key_env``, ``timeout_s``, ``max_retries``, ``params``, and either
    ``price = {input_per_m, output_per_m}`` or ``free = true`` (neither: the price table's).
    Raises ConfigError (or PricingError for a bad price) naming the file and the entry.
    """
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
        raw = tomllib.loads(raw_bytes.decode()) if path.suffix == ".toml" else loads(raw_bytes)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read models file {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"models file {path} must be a table of model name → settings")
    return {str(name): _model_config(path, str(name), entry) for name, entry in raw.items()}


def _model_config(path: Path, name: str, entry: Any) -> HttpModelConfig:
    where = f"models file {path}: model {name!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table of settings")
    unknown = sorted(set(entry) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_CONFIG_KEYS))}")
    base_url = entry.get("base_url")
    if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url):
        raise ConfigError(f"{where} needs base_url, an http:// or https:// URL (e.g. http://127.0.0.1:8080/v1)")
    price_entry, free = entry.get("price"), entry.get("free", False)
    if not isinstance(free, bool):
        raise ConfigError(f"{where}: free must be true or false")
    if free and price_entry is not None:
        raise ConfigError(f"{where}: give either price or free = true, not both")
    price: Price | None = FREE if free else None
    if price_entry is not None:
        if not isinstance(price_entry, dict) or set(price_entry) != {"input_per_m", "output_per_m"}:
            raise PricingError(f"{where}: price needs exactly input_per_m and output_per_m (USD per million tokens)")
        price = _config_price(price_entry["input_per_m"], price_entry["output_per_m"], where)
    params = entry.get("params", {})
    key_env = entry.get("api_key_env")
    if not isinstance(params, dict) or (key_env is not None and not isinstance(key_env, str)):
        raise ConfigError(f"{where}: params must be a table and api_key_env a variable name")
    try:
        timeout_s, retries = float(entry.get("timeout_s", 60.0)), int(entry.get("max_retries", 4))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: timeout_s and max_retries must be numbers") from None
    if timeout_s <= 0 or retries < 0:
        raise ConfigError(f"{where}: timeout_s must be > 0 and max_retries ≥ 0")
    return HttpModelConfig(base_url, str(entry.get("model", name)), key_env, timeout_s, retries,
                           price, params)


class ModelRegistry:
    """Resolves model names to adapters: simulated models plus configured HTTP models.

    A configured model's own price (or ``free``) prices its calls (:func:`call_cost`) and is put
    into this registry's price table under its configured name, over the table's own prices.
    """

    def __init__(
        self,
        http: Mapping[str, HttpModelConfig] | None = None,
        *,
        sleep: Sleep | None = None,
        clock: Monotonic | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.http = dict(http or {})
        self.sleep = sleep
        self.clock = clock
        self.prices = _with_configured_prices(prices or PriceTable(), self.http)
        self._built: dict[str, ModelAdapter] = {k: v for k, v in SIMULATED.items()}

    def register(self, adapter: ModelAdapter) -> None:
        """Make an adapter available under its name (e.g. a local model of your own)."""
        self._built[adapter.name] = adapter

    def names(self) -> list[str]:
        """Every model name this registry answers for: simulated, registered and configured."""
        return sorted(set(self._built) | set(self.http))

    def price_problem(self, name: str) -> str | None:
        """None if calls of model ``name`` can be priced, else a sentence saying how to price it.

        Resolves the adapter (UnknownModelError for an unknown name) but calls nothing.
        """
        adapter = self.get(name)
        if call_cost(self.prices, adapter, 0, 0) is not None:
            return None
        served = f" (served as {adapter.name!r})" if adapter.name != name else ""
        return (
            f"no price for model {name!r}{served}: neither a configured price, the price file nor "
            f"the genai-prices catalogue has it. Price it with --model-price IN,OUT (USD per million "
            f"input,output tokens) or declare it free with --model-free, or give it `price` or "
            f"`free = true` in the models file (TACHO_MODELS), or add it to the price file "
            f"(TACHO_PRICES); or accept unpriced calls with --allow-unpriced"
        )

    def get(self, name: str) -> ModelAdapter:
        """The adapter for a model name (raises UnknownModelError with the known names)."""
        if name in self._built:
            return self._built[name]
        cfg = self.http.get(name)
        if cfg is None:
            raise UnknownModelError(
                f"no adapter for model {name!r}; simulated: {', '.join(sorted(SIMULATED))}; "
                f"configured: {', '.join(sorted(self.http)) or 'none'}"
            )
        if self.sleep is None or self.clock is None:
            raise UnknownModelError(f"model {name!r} needs a sleep function and a clock injected")
        adapter = OpenAIChatModel(
            base_url=cfg.base_url, model=cfg.model, api_key_env=cfg.api_key_env,
            sleep=self.sleep, clock=self.clock, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
            params=cfg.params, price=cfg.price,
        )
        self._built[name] = adapter
        return adapter


def _with_configured_prices(table: PriceTable, http: Mapping[str, HttpModelConfig]) -> PriceTable:
    """``table`` with each configured model's own price under its configured name (estimates
    and budget checks name the candidate so; calls are priced by :func:`call_cost`)."""
    priced = {name: cfg.price for name, cfg in http.items() if cfg.price is not None}
    if not priced:
        return table
    return PriceTable({**table.prices, **priced}, catalogue=table.catalogue)


def call_cost(prices: PriceTable, adapter: ModelAdapter, input_tokens: int, output_tokens: int,
              *, at: datetime | None = None) -> Decimal | None:
    """Exact cost of one call of ``adapter``: its own configured price (``price``) if it has
    one, else the price table's for the model it names (None: unknown).

    Two configured entries may serve the same model name at different prices (a free local
    server and a paid one), so a configured price belongs to the adapter, not to the name.
    """
    own = getattr(adapter, "price", None)
    if isinstance(own, Price):
        return own.cost(input_tokens, output_tokens)
    return prices.cost_or_none(adapter.name, input_tokens, output_tokens, adapter.provider, at=at)
