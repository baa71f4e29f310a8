"""The agent runtime: runs agent functions live, sends every step to the platform as it happens,
and takes back kill switches and people's decisions.

    import tachograph
    rt = tachograph.connect()              # TACHO_URL, TACHO_API_KEY, TACHO_WORKSPACE
    result = rt.run("examples.triage:triage", {"ticket": "T-1", ...}, budget=tachograph.Budget(
        max_cost_usd="0.05", deadline_s=30))

Where events go is configured, not coded (:func:`connect`): ``kafka://broker:9092/topic``
(production: idempotent producer keyed by run), ``http://host:8000`` (``POST /v1/events`` with a
publisher key) or ``embedded:/path/to/data`` (a ledger in-process, when the platform is installed).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tachograph.agents import AgentSpec, agent_spec
from tachograph.builder import RunSpec, rfc3339
from tachograph.context import (
    DEFAULT_APPROVAL_TIMEOUT_S,
    ApprovalDecision,
    Context,
    Evaluation,
    ModelAnswer,
    RunStop,
    ToolAnswer,
    money_text,
    normalise,
    run_agent,
)
from tachograph.errors import (
    ApprovalsUnavailableError,
    ConfigError,
    HaltsUnavailableError,
    PolicyError,
    RunRuleError,
    ToolFailed,
)
from tachograph.halts import Halt
from tachograph.models import ChatRequest, HttpModelConfig, ModelRegistry, call_cost
from tachograph.platform import HttpPlatform, Platform
from tachograph.policy import OpaClient
from tachograph.prices import PriceTable
from tachograph.trace import current_trace_id
from tachograph.transports import HttpTransport, KafkaTransport, Transport

log = logging.getLogger(__name__)

DEFAULT_FAIL_CLOSED = frozenset({"write"})
"""What fails closed when neither the runtime nor the workspace says otherwise."""

HALTS_GRACE_S = 5.0
"""How long the runtime retries unreadable halts before it stops the run (fail closed)."""
APPROVAL_POLL_S = 5.0
"""The longest single long poll while waiting for a person (halts are checked between polls;
a decision ends the poll at once)."""
DEFAULT_MODEL = "sim-small-v1"


def random_id() -> str:
    """A random 32-hex id (run ids and event ids of live runs)."""
    return uuid.uuid4().hex


def _money(value: Decimal | str | int) -> Decimal:
    if isinstance(value, float):
        raise TypeError("money must be a Decimal, int or decimal string, never a float")
    return value if isinstance(value, Decimal) else Decimal(value)


@dataclass(frozen=True)
class Budget:
    """Caps on one run, enforced before every step; ``None`` means no cap. ``deadline_s``: wall
    time from ``run.started`` on the runtime's clock."""

    max_model_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: Decimal | str | int | None = None
    deadline_s: Decimal | str | int | float | None = None

    def to_json(self) -> dict[str, Any]:
        """The budget as ``run.started`` records it."""
        out: dict[str, Any] = {}
        if self.max_model_calls is not None:
            out["max_model_calls"] = self.max_model_calls
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.max_cost_usd is not None:
            out["max_cost_usd"] = _money(self.max_cost_usd)
        if self.deadline_s is not None:
            out["deadline_s"] = Decimal(str(self.deadline_s))
        return out


@dataclass
class Usage:
    """What a run used."""

    model_calls: int = 0
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_calls: int = 0


@dataclass
class RunResult:
    """A finished run: its id, outcome, the agent's result or the error, and its events."""

    run_id: str
    outcome: str
    result: dict[str, Any] | None
    error: str | None
    events: list[dict[str, Any]]
    usage: Usage = field(default_factory=Usage)
    _context: LiveContext | None = field(default=None, repr=False)

    @property
    def halted(self) -> bool:
        """Whether a kill switch stopped the run."""
        return bool(self.result and "kill_switch" in self.result)

    def feedback(self, accepted: bool, by: str, comment: str | None = None) -> None:
        """Record a person's feedback on this completed run (sent and flushed at once)."""
        if self._context is None:
            raise RunRuleError("this run is not live in this process: record feedback where it ran")
        data: dict[str, Any] = {"accepted": accepted, "by": by}
        if comment is not None:
            data["comment"] = comment
        self._context._emit("feedback.recorded", data)
        self._context.runtime.transport.flush(self._context.runtime.flush_timeout)


class LiveContext(Context):
    """Calls the real model adapters and tool functions; sends each event as it is made; checks
    the kill switches before every step and waits for people's decisions."""

    def __init__(self, runtime: Runtime, spec: RunSpec, agent: AgentSpec, model: str) -> None:
        super().__init__(spec, tools=agent.tools, prompts=agent.prompts, model=model,
                         prices=runtime.models.prices, event_ids=runtime.event_ids)
        self.runtime = runtime
        self.started = runtime.clock()

    @property
    def dry_run(self) -> bool:
        """Whether side effects are simulated, never executed."""
        return self.spec.mode == "dry_run"

    def _stamp(self, seq: int, etype: str, advance_ms: Any) -> str:
        return rfc3339(self.runtime.clock())

    def _publish(self, event: dict[str, Any], canonical: bytes) -> None:
        self.runtime.transport.send(self.spec.run_id, event["event_id"], canonical)

    def _default_approval_timeout(self) -> Decimal | float:
        return self.runtime.approval_timeout_s

    def _elapsed_s(self) -> Decimal:
        return Decimal(int((self.runtime.clock() - self.started) * 1000)) / 1000

    def _halt(self, side_effect: str | None = None) -> Halt | None:
        platform = self.runtime.platform
        if platform is None or self.spec.replay_of is not None:
            return None
        give_up = self.runtime.monotonic() + self.runtime.halts_grace_s
        while True:
            try:
                halts = platform.halts(self.spec.workspace, fresh=side_effect == "write")
                return halts.find(self.spec.workflow, self.spec.agent["id"], self.spec.run_id)
            except HaltsUnavailableError as e:
                if self.runtime.monotonic() >= give_up:
                    self._stop = RunStop("failed", f"stopped: the kill switches could not be checked ({e})")
                    raise self._stop from e
                self.runtime.sleep(0.25)

    def _apply(self, fn: Callable[[], Any] | None) -> Any:
        return None if fn is None or self.dry_run else fn()

    def _evaluate(self, policy_input: dict[str, Any], kind: str, name: str,
                  side_effect: str) -> Evaluation | None:
        client = self.runtime.policy
        if client is None:
            return None
        try:
            d = client.decide(policy_input)
        except PolicyError as e:
            fail_closed, whose = self.runtime.fail_closed_for(self.spec.workspace)
            closed = side_effect in fail_closed
            why = (f"policy engine unavailable ({e}); {side_effect} actions fail "
                   f"{'closed: denied' if closed else 'open: allowed'} ({whose})")
            return Evaluation(client.path, "deny" if closed else "allow", why[:2000])
        return Evaluation(client.path, d.result, d.reason, d.revision, d.decision_id)

    def _answer_model(self, call_id: str, request: dict[str, Any]) -> ModelAnswer:
        adapter = self.runtime.models.get(self.model)
        chat = ChatRequest(self.model, tuple(request["messages"]), request.get("params") or {})
        r = adapter.complete(chat)
        cost = call_cost(self.prices, adapter, r.input_tokens, r.output_tokens)
        return ModelAnswer(
            adapter.name, adapter.provider, r.content, r.input_tokens, r.output_tokens,
            None if cost is None else money_text(cost), r.latency_ms, r.finish_reason, r.tool_calls,
        )

    def _answer_tool(self, call_id: str, name: str, args: dict[str, Any]) -> ToolAnswer:
        tool = self.tools.get(name)
        fn = tool.fn
        if self.dry_run and tool.side_effect != "none":
            fn = tool.simulator or (lambda _args: {"dry_run": True, "executed": False})
        t0 = self.runtime.monotonic()
        try:
            result = fn(args)
        except ToolFailed as e:
            return ToolAnswer("error", None, e.error, _ms(self.runtime.monotonic() - t0), tool.side_effect)
        except Exception as e:  # a live tool's own failure is recorded, not hidden
            return ToolAnswer("error", None, f"{type(e).__name__}: {e}",
                              _ms(self.runtime.monotonic() - t0), tool.side_effect)
        return ToolAnswer("ok", normalise(result), None, _ms(self.runtime.monotonic() - t0), tool.side_effect)

    def _answer_approval(
        self, approval_id: str, summary: str, risk: str, change_id: str | None, timeout: float
    ) -> ApprovalDecision | None:
        rt = self.runtime
        if rt.platform is None:
            raise ConfigError(
                "this run asked a person for approval, but the runtime has no platform to ask: "
                "connect over http://, or give kafka:// an api_url (TACHO_API_URL)")
        rt.transport.flush(rt.flush_timeout)  # the request must reach the platform before we wait
        deadline = rt.monotonic() + timeout
        unseen_since = rt.monotonic()
        while True:
            halt = self._halt()
            if halt is not None:
                self._halted(halt)
            left = deadline - rt.monotonic()
            if left <= 0:
                return None  # expired: the run takes its not-approved path
            try:
                status = rt.platform.approval(self.spec.workspace, approval_id, min(left, APPROVAL_POLL_S))
            except ApprovalsUnavailableError as e:
                log.warning("%s; retrying", e)
                rt.sleep(min(1.0, max(left, 0.0)))
                continue
            if status is None:  # not ingested yet (Kafka): poll until it shows up
                if rt.monotonic() - unseen_since > rt.flush_timeout + 60:
                    raise ApprovalsUnavailableError(
                        f"the platform never showed approval {approval_id!r}: is `tacho ingest` running?")
                rt.sleep(min(0.2, max(left, 0.0)))
                continue
            if status.status in ("approved", "rejected"):
                return ApprovalDecision(status.status, status.decided_by or "unknown", status.reason)
            if status.status == "expired":
                return None


def _ms(seconds: float) -> Decimal:
    return Decimal(str(round(max(seconds, 0.0) * 1000, 3)))


class Runtime:
    """Runs agent functions live over one transport and (optionally) one platform link."""

    def __init__(
        self,
        *,
        workspace: str,
        transport: Transport,
        platform: Platform | None = None,
        models: ModelRegistry | None = None,
        model: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        run_ids: Callable[[], str] = random_id,
        event_ids: Callable[[str, int], str] | None = None,
        trace_ids: Callable[[], str] = current_trace_id,
        flush_timeout: float = 30.0,
        approval_timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S,
        halts_grace_s: float = HALTS_GRACE_S,
        policy: OpaClient | None = None,
        policy_fail_closed: Collection[str] | None = None,
    ) -> None:
        self.workspace = workspace
        self.transport = transport
        self.platform = platform
        self.models = models or ModelRegistry(sleep=sleep, clock=monotonic)
        self.model = model or DEFAULT_MODEL
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.run_ids = run_ids
        self.event_ids: Callable[[str, int], str] = event_ids or (lambda _run, _seq: random_id())
        self.trace_ids = trace_ids
        self.flush_timeout = flush_timeout
        self.approval_timeout_s = approval_timeout_s
        self.halts_grace_s = halts_grace_s
        self.policy = policy
        self.policy_fail_closed = None if policy_fail_closed is None else frozenset(policy_fail_closed)
        """Side effects (``none``, ``read``, ``write``) whose actions are denied when the policy
        engine cannot be asked; the others are allowed. Either way it is recorded. None (the
        default): the workspace's setting, from its policy in force (``fail_closed`` of the
        revision, read from the platform when OPA fails), else ``write`` only."""

    def fail_closed_for(self, workspace: str) -> tuple[frozenset[str], str]:
        """The side effects that fail closed now, and whose setting that is (for the record)."""
        if self.policy_fail_closed is not None:
            return self.policy_fail_closed, "this runtime's setting"
        ask = getattr(self.platform, "policy_fail_closed", None)
        found = ask(workspace) if ask is not None else None
        if found is not None:
            return frozenset(found), f"workspace {workspace}'s setting"
        return DEFAULT_FAIL_CLOSED, "the default: the workspace's setting could not be read"

    def run(
        self,
        agent: str | Callable[..., Any] | AgentSpec,
        input: Mapping[str, Any] | None = None,
        *,
        workflow: str | None = None,
        budget: Budget | Mapping[str, Any] | None = None,
        mode: str = "execute",
        risk_tier: str = "low",
        labels: Mapping[str, str] | None = None,
        run_id: str | None = None,
        model: str | None = None,
        prompts: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run ``agent`` once on ``input``: ``run.started`` first, every step as it happens,
        ``run.completed`` last; then wait until the platform has every event.

        A halt or a crossed budget ends the run ``cancelled`` (see ``RunResult.result``); agent
        errors end it ``failed``. Raises DeliveryError if events could not be delivered.
        """
        spec = agent_spec(agent)
        if prompts:
            spec = spec.with_prompts(prompts)
        flow = workflow or spec.workflow
        if not flow:
            raise ConfigError(f"{spec.ref} declares no WORKFLOW: pass workflow=")
        caps = budget.to_json() if isinstance(budget, Budget) else dict(budget or {})
        run = RunSpec(
            workspace=self.workspace,
            run_id=run_id or self.run_ids(),
            workflow=flow,
            agent={"id": spec.identity.get("id") or spec.ref.rsplit(":", 1)[-1],
                   "version": spec.identity.get("version") or "unversioned"},
            mode=mode,
            risk_tier=risk_tier,
            input=dict(input or {}),
            budget=caps or None,
            labels=dict(labels) if labels else None,
            entry_point=spec.ref if _importable(spec.ref) else None,
            trace_id=self.trace_ids(),
        )
        ctx = LiveContext(self, run, spec, model or self.model)
        try:
            events = run_agent(spec.fn, ctx)
        finally:
            self.transport.flush(self.flush_timeout)
        done = events[-1]["data"]
        return RunResult(
            run.run_id, done["outcome"], done.get("result"), done.get("error"), events,
            Usage(ctx.model_calls, ctx.tokens, ctx.cost, ctx.unpriced_calls), ctx,
        )

    def flush(self) -> None:
        """Wait until the platform has every event sent so far."""
        self.transport.flush(self.flush_timeout)

    def close(self) -> None:
        """Flush and release the transport and the platform link."""
        try:
            self.transport.close(self.flush_timeout)
        finally:
            if self.platform is not None:
                self.platform.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ENTRY_POINT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$")


def _importable(ref: str) -> bool:
    """Whether ``ref`` names code replay can import again (not ``__main__``, a lambda or a
    function defined inside another)."""
    return bool(_ENTRY_POINT.match(ref)) and not ref.startswith("__main__:") and "<locals>" not in ref


def _models_from_env(env: Mapping[str, str], sleep: Callable[[float], None],
                     monotonic: Callable[[], float]) -> ModelRegistry:
    prices_file = env.get("TACHO_PRICES")
    prices = PriceTable.from_file(Path(prices_file)) if prices_file else PriceTable()
    http: dict[str, HttpModelConfig] = {}
    if env.get("TACHO_MODEL_URL") and env.get("TACHO_MODEL"):
        name = env["TACHO_MODEL"]
        http[name] = HttpModelConfig(base_url=env["TACHO_MODEL_URL"], model=name,
                                     api_key_env="TACHO_MODEL_API_KEY" if env.get("TACHO_MODEL_API_KEY") else None)
    return ModelRegistry(http, sleep=sleep, clock=monotonic, prices=prices)


def connect(
    url: str | None = None,
    *,
    workspace: str | None = None,
    api_key: str | None = None,
    api_url: str | None = None,
    env: Mapping[str, str] | None = None,
    **runtime: Any,
) -> Runtime:
    """A runtime for the transport at ``url`` (default ``TACHO_URL``).

    - ``http://host:port`` / ``https://...``: events over ``POST /v1/events``; halts and approvals
      from the same server. Needs a publisher key (``api_key`` or ``TACHO_API_KEY``).
    - ``kafka://host:port[,host:port]/topic``: events to Kafka (idempotent, acks=all, keyed by
      run). Halts and approvals need the API too: ``api_url`` (``TACHO_API_URL``) and a key.
    - ``embedded:/path/to/data``: the ledger in this process (needs the platform installed).

    ``workspace`` (``TACHO_WORKSPACE``, default ``default``); models from ``TACHO_MODEL`` (and
    ``TACHO_MODEL_URL`` for an OpenAI-compatible server), prices overridden by ``TACHO_PRICES``.
    Other keyword arguments go to :class:`Runtime` (``clock``, ``run_ids``, ...).
    """
    env = dict(os.environ if env is None else env)
    url = url or env.get("TACHO_URL")
    if not url:
        raise ConfigError("no transport: pass a URL or set TACHO_URL (kafka://, http://, embedded:)")
    workspace = workspace or env.get("TACHO_WORKSPACE") or "default"
    api_key = api_key or env.get("TACHO_API_KEY")
    api_url = api_url or env.get("TACHO_API_URL")
    sleep = runtime.get("sleep", time.sleep)
    monotonic = runtime.get("monotonic", time.monotonic)
    runtime.setdefault("models", _models_from_env(env, sleep, monotonic))
    runtime.setdefault("model", env.get("TACHO_MODEL"))
    if env.get("TACHO_OPA_URL") and "policy" not in runtime:
        runtime["policy"] = OpaClient(env["TACHO_OPA_URL"], env.get("TACHO_OPA_PATH") or "tachograph/decision")
    parts = urlsplit(url)
    transport: Transport
    platform: Platform | None = None
    if parts.scheme in ("http", "https"):
        if not api_key:
            raise ConfigError(f"{url}: the HTTP transport needs a publisher key (api_key or TACHO_API_KEY)")
        base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        transport = HttpTransport(base, api_key)
        platform = HttpPlatform(api_url or base, api_key)
    elif parts.scheme == "kafka":
        topic = unquote(parts.path.strip("/")) or "agent-events"
        if not parts.netloc:
            raise ConfigError(f"{url}: name the brokers, e.g. kafka://localhost:9092/agent-events")
        transport = KafkaTransport(parts.netloc, topic)
        if api_url:
            if not api_key:
                raise ConfigError("TACHO_API_URL is set but no key: set TACHO_API_KEY (a publisher key)")
            platform = HttpPlatform(api_url, api_key)
    elif parts.scheme == "embedded":
        backend = _backend("embedded")
        transport, platform = backend(unquote(parts.path or parts.netloc), workspace)
    else:
        raise ConfigError(f"unknown transport {url!r}: use kafka://, http://, https:// or embedded:")
    return Runtime(workspace=workspace, transport=transport, platform=platform, **runtime)


def _backend(name: str) -> Callable[[str, str], tuple[Transport, Platform | None]]:
    found = [ep for ep in entry_points(group="tachograph.transports") if ep.name == name]
    if not found:
        raise ConfigError(
            f"the {name} transport comes with the platform (pip install tachograph); this "
            "environment has only the agent runtime: use kafka:// or http://")
    loaded: Callable[[str, str], tuple[Transport, Platform | None]] = found[0].load()
    return loaded
