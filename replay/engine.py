"""The replay engine: fidelity and what-if replays of recorded runs, recorded into the ledger.

Runs replay in parallel (``concurrent.futures``), but results and ledger appends follow the
input order, so the outcome never depends on scheduling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from domain.ledger import Ledger
from domain.ports import Source
from replay.cache import CachedModels, ReplayAnswers, ResponseCache
from replay.errors import UnpricedModelError
from replay.history import RecordedRun
from replay.recorder import LedgerRecorder
from replay.replaying import ReplayContext
from replay.report import Gate, RunResult, feedback_of, figures, summarize
from replay.selection import NotReplayable, code_version
from tachograph.agents import AgentSpec, prompt_digest
from tachograph.builder import RunSpec
from tachograph.context import run_agent
from tachograph.models import ModelRegistry

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ReplayConfig:
    """One replay: its id, when it was made (injected), the candidate, and the gate.

    ``allow_unpriced``: call models with no known price anyway (their calls are recorded
    unpriced); otherwise such a replay is refused before it starts. ``refresh_cache``: with a
    response cache, call the models again and store their new answers (``--no-cache``).
    """

    replay_id: str
    created: str
    candidate_model: str | None = None
    gate: Gate = field(default_factory=Gate)
    workers: int = 2
    chunk: int = 256
    allow_unpriced: bool = False
    refresh_cache: bool = False

    def mode(self, agent: AgentSpec) -> str:
        """``fidelity`` with no candidate, else ``what-if``."""
        return "what-if" if self.candidate_model or agent.prompt_overrides else "fidelity"

    def candidate(self, agent: AgentSpec) -> str:
        """A label naming the candidate: model and prompt versions."""
        parts = []
        if self.candidate_model:
            parts.append(f"model={self.candidate_model}")
        parts.extend(f"prompt.{k}={prompt_digest(v)}" for k, v in sorted(agent.prompt_overrides.items()))
        return ";".join(parts) or "recorded"


def replay_run_id(replay_id: str, run_id: str) -> str:
    """The run id of a replay of ``run_id`` (at most 128 characters)."""
    rid = f"{replay_id}.{run_id}"
    if len(rid) <= 128:
        return rid
    return f"{replay_id}.{hashlib.sha256(run_id.encode()).hexdigest()[:32]}"


def replay_trace_id(replay_run_id: str) -> str:
    """The W3C trace id of a replay run: derived from its run id, so the same replay twice is
    identical (32 lowercase hex)."""
    return hashlib.sha256(replay_run_id.encode()).hexdigest()[:32]


def replay_spec(run: RecordedRun, config: ReplayConfig, agent: AgentSpec) -> RunSpec:
    """The ``run.started`` of a replay: the recorded run's (its entry point included), with
    replay labels, ``replay_of`` and a trace id of its own."""
    d = run.started
    labels = dict(d.get("labels") or {})
    labels.update({
        "replay.id": config.replay_id,
        "replay.candidate": config.candidate(agent),
        "replay.mode": config.mode(agent),
    })
    run_id = replay_run_id(config.replay_id, run.run_id)
    return RunSpec(
        workspace=run.workspace,
        run_id=run_id,
        workflow=d["workflow"],
        agent=run.events[0]["agent"],
        mode=d["mode"],
        risk_tier=d["risk_tier"],
        input=d.get("input"),
        budget=d.get("budget"),
        labels=labels,
        replay_of=run.run_id,
        entry_point=d.get("entry_point"),
        trace_id=replay_trace_id(run_id),
    )


def replay_one(
    run: RecordedRun, agent: AgentSpec, config: ReplayConfig, models: ModelRegistry
) -> tuple[RunResult, list[dict[str, Any]]]:
    """Replay one recorded run (pure: no ledger, no clock); return its result and events."""
    mode = config.mode(agent)
    ctx = ReplayContext(
        replay_spec(run, config, agent), run, mode=mode, tools=agent.tools, prompts=agent.prompts,
        models=models, candidate_model=config.candidate_model,
    )
    events = run_agent(agent.fn, ctx)
    accepted = feedback_of(run)
    before = figures(run.events, accepted)
    after_raw = figures(events, None)
    result = RunResult(run.run_id, run.workspace, ctx.spec.run_id, "", before, after_raw,
                       recorded_version=run.agent_version)
    # feedback carries over only to a run whose outcome and result are unchanged
    after = figures(events, None if result.changed else accepted)
    result.after = after
    result.first_divergence = ctx.divergence.to_json() if ctx.divergence else None
    result.approvals_now_required = list(ctx.approvals_required)
    completed = events[-1]["data"]
    result.error = completed.get("error")
    if mode == "fidelity":
        result.status = "nondeterministic" if ctx.divergence else "reproduced"
    elif completed.get("result", {}) and "replay_stopped" in (completed.get("result") or {}):
        result.status = "stopped"
    elif ctx.divergence is not None:
        result.status = "diverged"
    else:
        result.status = "changed" if result.changed else "unchanged"
    return result, events


def models_called(runs: Sequence[RecordedRun], agent: AgentSpec, config: ReplayConfig) -> list[str]:
    """The model names a replay will call: none in fidelity (answers are recorded), the
    candidate, or (prompt-only what-if) the recorded runs' models."""
    if config.mode(agent) == "fidelity":
        return []
    if config.candidate_model is not None:
        return [config.candidate_model]
    names = {e["data"]["model"] for run in runs for e in run.events if e["type"] == "model.called"}
    return sorted(names)


def check_prices(runs: Sequence[RecordedRun], agent: AgentSpec, config: ReplayConfig,
                 models: ModelRegistry) -> None:
    """Refuse (UnpricedModelError) a replay that would call a model with no known price, unless
    ``config.allow_unpriced``; resolves the adapters (UnknownModelError) but calls nothing."""
    problems = [p for name in models_called(runs, agent, config)
                if (p := models.price_problem(name)) is not None]
    if problems and not config.allow_unpriced:
        raise UnpricedModelError("; ".join(problems) + " (nothing was called)")


def _chunks(runs: Sequence[RecordedRun], n: int) -> Iterator[Sequence[RecordedRun]]:
    for i in range(0, len(runs), n):
        yield runs[i : i + n]


def run_replay(
    runs: Sequence[RecordedRun],
    agent: AgentSpec,
    config: ReplayConfig,
    models: ModelRegistry,
    *,
    ledger: Ledger | None = None,
    progress: Progress | None = None,
    not_replayable: Sequence[NotReplayable] = (),
    cache: ResponseCache | None = None,
    answers: ReplayAnswers | None = None,
) -> dict[str, Any]:
    """Replay runs in parallel, record them in input order, and return the replay report.

    ``not_replayable``: runs selected but recorded by other code (see :mod:`replay.selection`),
    reported with their reasons and counted, never replayed and never failing the gate.
    Refuses a replay that would call an unpriced model before anything runs (see
    :func:`check_prices`). With a ``cache``, real models' answers come from it when it has the
    request (``config.refresh_cache``: never) and ``answers`` (the caller's, to keep them with
    the report) counts them; the report's ``answers`` says how many were cached and fresh.
    """
    check_prices(runs, agent, config, models)
    if cache is not None:
        answers = answers if answers is not None else ReplayAnswers()
        models = CachedModels(models, cache, answers, refresh=config.refresh_cache)
    recorder = (
        LedgerRecorder(ledger, Source(kind="replay", name=config.replay_id)) if ledger else None
    )
    results: list[RunResult] = []

    def one(run: RecordedRun) -> tuple[RunResult, list[dict[str, Any]]]:
        return replay_one(run, agent, config, models)

    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        for chunk in _chunks(runs, config.chunk):
            for result, events in pool.map(one, chunk):
                results.append(result)
                if recorder is not None:
                    recorder.add(events)
                if progress is not None:
                    progress(1)
    totals = recorder.flush() if recorder is not None else None
    version = code_version(agent)
    summary = summarize(results)
    summary.update(_selection_summary(results, not_replayable, version))
    mode = config.mode(agent)
    failures = config.gate.failures(summary)
    if mode == "fidelity" and summary["statuses"].get("nondeterministic"):
        failures.append(_not_reproduced(results, version))
    return {
        "replay_id": config.replay_id,
        "created": config.created,
        "mode": mode,
        "agent": agent.ref,
        "agent_version": version,
        "candidate": config.candidate(agent),
        "candidate_model": config.candidate_model,
        "prompts": {k: prompt_digest(v) for k, v in sorted(agent.prompt_overrides.items())},
        "summary": summary,
        "gate": {**config.gate.to_json(), "passed": not failures, "failures": failures},
        "answers": None if cache is None or answers is None else answers.summary(),
        "recorded": None if totals is None else {
            "accepted": totals.accepted, "duplicates": totals.duplicates,
            "quarantined": totals.quarantined, "problems": totals.problems[:20],
        },
        "runs": [r.to_json() for r in results],
        "not_replayable": [n.to_json() for n in not_replayable],
    }


def _selection_summary(results: Sequence[RunResult], not_replayable: Sequence[NotReplayable],
                       version: str) -> dict[str, Any]:
    """Which code recorded the runs: versions, and the runs other code recorded."""
    reasons: dict[str, int] = {}
    for n in not_replayable:
        reasons[n.kind] = reasons.get(n.kind, 0) + 1
    versions: dict[str, int] = {}
    for r in results:
        versions[r.recorded_version or ""] = versions.get(r.recorded_version or "", 0) + 1
    return {
        "not_replayable": len(not_replayable),
        "not_replayable_reasons": dict(sorted(reasons.items())),
        "agent_version": version,
        "recorded_versions": dict(sorted(versions.items())),
        "other_version_runs": sum(n for v, n in versions.items() if v != version),
    }


def _not_reproduced(results: Sequence[RunResult], version: str) -> str:
    """The fidelity failure, saying how many of the runs were recorded by another version."""
    failed = [r for r in results if r.status == "nondeterministic"]
    text = f"{len(failed)} run(s) did not reproduce their recording"
    other = sum(1 for r in failed if r.recorded_version != version)
    if other:
        text += (f" ({other} of them recorded by another agent version than {version}: "
                 "the difference may be the upgrade rather than non-determinism)")
    return text


def report_passed(report: Mapping[str, Any]) -> bool:
    """Whether a replay report passed its gate."""
    return bool(report["gate"]["passed"])
