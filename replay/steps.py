"""Step replay: re-send each recorded model request to a candidate model and compare the answers.

Needs no agent code, so it works on any recorded run, OTLP-ingested ones included: every
``model.called`` that kept its request (messages and params) is sent again, as it was, to the
candidate. Per call it tells whether the answer changed (content, tool-call choice, tool-call
arguments) and the tokens and cost before and after; per replay the change rates, gated like a
full replay. What it cannot tell: what the agent would have done next with a different answer
(no downstream tool calls, approvals, outcomes); that takes a full replay with the agent's code.
Nothing is written to the ledger: the report is the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ingest.otlp_messages import REQUEST_BOUND_BYTES, RESPONSE_TRUNCATED, TRUNCATED_ROLE
from replay.cache import CachedModels, ReplayAnswers, ResponseCache
from replay.history import RecordedRun
from replay.report import Gate
from replay.step_report import CallResult, Changes, summarize_steps
from tachograph.builder import parse_time
from tachograph.contract.canonical import dumps, loads
from tachograph.errors import ModelRequestError, ModelResponseError
from tachograph.models import ChatRequest, ChatResponse, ModelAdapter, ModelRegistry

Progress = Callable[[int], None]
NOT_RESENT = ("stream", "stream_options")
"""Request params a step replay leaves out: the candidate is asked for one whole answer."""
NO_REQUEST = "no-request"
EMPTY_REQUEST = "empty-request"
TRUNCATED_REQUEST = "truncated-request"
PREVIEW_CHARS = 500


@dataclass(frozen=True)
class StepConfig:
    """One step replay: its id, when it was made (injected), the candidate and the gate."""

    replay_id: str
    created: str
    candidate_model: str
    gate: Gate = field(default_factory=Gate)
    workers: int = 2
    refresh_cache: bool = False
    """Call the candidate again instead of answering from the response cache (``--no-cache``)."""

    @property
    def candidate(self) -> str:
        """A label naming the candidate."""
        return f"model={self.candidate_model}"


def unreplayable(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why a recorded model call cannot be sent again (kind, sentence), or None when it can."""
    request = data.get("request")
    if not isinstance(request, Mapping):
        return NO_REQUEST, "the call was recorded without its request messages"
    messages = request.get("messages") or []
    if not messages:
        return EMPTY_REQUEST, "the recorded request has no messages"
    if any(isinstance(m, Mapping) and m.get("role") == TRUNCATED_ROLE for m in messages):
        return TRUNCATED_REQUEST, (f"the request was over {REQUEST_BOUND_BYTES // 1024} KiB and cut at "
                                   "ingest; sending the cut request would compare another question")
    return None


def chat_request(model: str, data: Mapping[str, Any]) -> ChatRequest:
    """The recorded request of a model call, addressed to ``model``."""
    request = data["request"]
    params = {k: v for k, v in (request.get("params") or {}).items() if k not in NOT_RESENT}
    return ChatRequest(model, tuple(request["messages"]), params)


# --- comparing answers --------------------------------------------------------------------------------
def _content(value: Any) -> str:
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else dumps(value).decode()


def _arguments(value: Any) -> Any:
    """Tool-call arguments parsed when they are a JSON string (else compared as written)."""
    if isinstance(value, str):
        try:
            return loads(value)
        except ValueError:
            return value
    return value


def tool_calls_of(response: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(tool name, canonical arguments) of each tool call in an answer, ids left out."""
    out: list[tuple[str, str]] = []
    for call in (response or {}).get("tool_calls") or []:
        if not isinstance(call, Mapping):
            out.append(("", dumps(call).decode()))
            continue
        inner = call.get("function")
        fn: Mapping[str, Any] = inner if isinstance(inner, Mapping) else call
        out.append((str(fn.get("name", "")), dumps(_arguments(fn.get("arguments"))).decode()))
    return out


def recorded_answer(response: Any) -> bool:
    """Whether a recorded response holds an answer to compare with (not cut at ingest)."""
    if not isinstance(response, Mapping) or ("content" not in response and "tool_calls" not in response):
        return False
    content = response.get("content")
    return not (isinstance(content, str) and RESPONSE_TRUNCATED.search(content))


def compare(recorded: Mapping[str, Any] | None, answer: Mapping[str, Any]) -> Changes:
    """Compare answers: content (whitespace at the ends ignored), tool-call names in order, and
    their arguments as canonical JSON (call ids ignored)."""
    if not recorded_answer(recorded):
        return Changes(None, None, None)
    assert recorded is not None
    before, after = tool_calls_of(recorded), tool_calls_of(answer)
    choice = [n for n, _ in before] != [n for n, _ in after]
    args = not choice and before != after
    content = _content(recorded.get("content")) != _content(answer.get("content"))
    return Changes(content or choice or args, choice, args)


# --- one call, one replay ---------------------------------------------------------------------------
def _side(response: Mapping[str, Any] | None, tin: int, tout: int, cost: Decimal | None,
          full: bool) -> dict[str, Any]:
    resp = dict(response or {})
    content = resp.get("content")
    if not full and isinstance(content, str) and len(content) > PREVIEW_CHARS:
        content = content[:PREVIEW_CHARS] + "…"
    return {"content": content, "tool_calls": resp.get("tool_calls"),
            "finish_reason": resp.get("finish_reason"), "input_tokens": tin, "output_tokens": tout,
            "cost_usd": cost}


def _answer_json(r: ChatResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"content": r.content}
    if r.tool_calls:
        out["tool_calls"] = r.tool_calls
    if r.finish_reason is not None:
        out["finish_reason"] = r.finish_reason
    return out


def replay_call(run: RecordedRun, event: Mapping[str, Any], adapter: ModelAdapter,
                models: ModelRegistry) -> CallResult:
    """Send one recorded model call's request to the candidate and compare its answer.

    A request the candidate refuses (HTTP 4xx) or answers with something that is not a chat
    completion is a per-call ``error`` (a changed answer); a candidate that cannot be reached
    or refuses the credentials raises, ending the replay.
    """
    d = event["data"]
    before_cost = None if d.get("priced") is False else Decimal(str(d["cost_usd"]))
    base = CallResult(run.run_id, run.workspace, int(event["seq"]), str(d["call_id"]), str(d["model"]),
                      "replayed")
    base.before = _side(d.get("response"), int(d["input_tokens"]), int(d["output_tokens"]), before_cost,
                        full=False)
    problem = unreplayable(d)
    if problem is not None:
        base.status, base.reason_kind, base.reason = "unreplayable", problem[0], problem[1]
        return base
    try:
        r = adapter.complete(chat_request(adapter.name, d))
    except (ModelRequestError, ModelResponseError) as e:
        base.status, base.reason, base.changes = "error", f"{type(e).__name__}: {e}", Changes(True, None, None)
        base.after = _side(None, 0, 0, Decimal(0), full=True)
        return base
    cost = models.prices.cost_or_none(adapter.name, r.input_tokens, r.output_tokens, adapter.provider,
                                      at=parse_time(str(event["time"])))
    answer = _answer_json(r)
    base.after = _side(answer, r.input_tokens, r.output_tokens, cost, full=True)
    base.changes = compare(d.get("response"), answer)
    return base


def _calls(runs: Sequence[RecordedRun]) -> Iterator[tuple[RecordedRun, dict[str, Any]]]:
    for run in runs:
        for event in run.events:
            if event["type"] == "model.called":
                yield run, event


def run_step_replay(runs: Sequence[RecordedRun], config: StepConfig, models: ModelRegistry, *,
                    progress: Progress | None = None,
                    skipped: Sequence[Mapping[str, Any]] = (),
                    cache: ResponseCache | None = None,
                    answers: ReplayAnswers | None = None) -> dict[str, Any]:
    """Step-replay every model call of ``runs`` on the candidate (in parallel, reported in
    recorded order) and return the report. ``skipped``: runs given but left out, with reasons.
    With a ``cache``, a real candidate's answers come from it as in full replays (the same
    canonical request, the same answer); ``answers`` counts them for the report."""
    if cache is not None:
        answers = answers if answers is not None else ReplayAnswers()
        models = CachedModels(models, cache, answers, refresh=config.refresh_cache)
    adapter = models.get(config.candidate_model)
    calls = list(_calls(runs))
    left = {(r.workspace, r.run_id): 0 for r in runs}
    for run, _ in calls:
        left[(run.workspace, run.run_id)] += 1
    without_calls = sum(1 for n in left.values() if n == 0)
    if progress is not None and without_calls:
        progress(without_calls)

    def one(item: tuple[RecordedRun, dict[str, Any]]) -> CallResult:
        return replay_call(item[0], item[1], adapter, models)

    results: list[CallResult] = []
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        for result in pool.map(one, calls):
            results.append(result)
            key = (result.workspace, result.run_id)
            left[key] -= 1
            if progress is not None and left[key] == 0:
                progress(1)
    summary = summarize_steps(runs, results)
    failures = config.gate.failures(summary)
    return {
        "replay_id": config.replay_id,
        "created": config.created,
        "mode": "steps",
        "agent": None,
        "candidate": config.candidate,
        "candidate_model": config.candidate_model,
        "candidate_provider": adapter.provider,
        "summary": summary,
        "gate": {**config.gate.to_json(), "passed": not failures, "failures": failures},
        "recorded": None,
        "runs": _per_run(runs, results),
        "not_replayable": list(skipped),
        "answers": None if cache is None or answers is None else answers.summary(),
    }


def _per_run(runs: Sequence[RecordedRun], results: Sequence[CallResult]) -> list[dict[str, Any]]:
    by_run: dict[tuple[str, str], list[CallResult]] = {}
    for r in results:
        by_run.setdefault((r.workspace, r.run_id), []).append(r)
    out: list[dict[str, Any]] = []
    for run in runs:
        calls = by_run.get((run.workspace, run.run_id), [])
        changed = any(c.changes is not None and c.changes.response for c in calls)
        replayed = sum(1 for c in calls if c.status != "unreplayable")
        out.append({
            "run_id": run.run_id, "workspace": run.workspace, "workflow": run.started.get("workflow"),
            "status": "changed" if changed else "unchanged" if replayed else "unreplayable",
            "changed": changed, "model_calls": len(calls), "replayed_calls": replayed,
            "calls": [c.to_json() for c in calls],
        })
    return out
