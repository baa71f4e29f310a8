"""Replays started over HTTP: allow-listed agents, run in a background worker, one workspace each.

A policy replay (``"mode": "policy"``) names a stored policy revision of the workspace: its files
are served by an OPA sidecar the server starts (``TACHO_OPA_BIN`` or ``opa`` on PATH) from a
private temporary directory, never from a path or URL the request gives.

A job lives in memory while it is queued or running; a finished replay's report is stored with
the CLI's (``<data dir>/replays/<id>.json``, ``tacho replay show`` reads it) and tagged with the
workspace that started it, so it survives restarts. A failed job is kept in memory only.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from api.model_config import model_registry
from api.policies import PolicyService
from api.routes.errors import BadParameter, Unavailable
from api.schemas import ReplayStart
from domain.errors import BackpressureError, NotFoundError, TachographError
from domain.ledger import Ledger, iso
from domain.ports import LedgerStore
from ingest.policies import Revision
from projections.run_index import RunIndex
from replay.cache import ReplayAnswers, ResponseCache
from replay.errors import (
    AgentLoadError,
    PolicyReplayError,
    PromptError,
    ReplayNotFoundError,
    UnknownModelError,
)
from replay.store import ReplayReports
from tachograph.contract.canonical import loads
from tachograph.models import HttpModelConfig, ModelRegistry
from tachograph.prices import PriceTable

if TYPE_CHECKING:  # the replay machinery is imported when a replay is asked for, not at start
    from replay.engine import ReplayConfig
    from replay.history import RecordedRun
    from replay.policy_replay import PolicyGate
    from replay.report import Gate
    from replay.selection import Selection
    from replay.steps import StepConfig
    from tachograph.agents import AgentSpec

log = logging.getLogger(__name__)
KEEP_FINISHED = 1000


@dataclass
class ReplayJob:
    """One replay started over HTTP and where it has got to."""

    replay_id: str
    workspace: str
    key_id: str
    created: str
    agent: str | None  # None: a step replay (no agent code)
    mode: str
    candidate: str
    status: str = "queued"  # queued | running | finished | failed
    done: int = 0
    total: int | None = None
    finished: str | None = None
    passed: bool | None = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def advance(self, n: int) -> None:
        """Count ``n`` more replayed runs."""
        with self.lock:
            self.done += n

    def to_json(self) -> dict[str, Any]:
        """The job's state (no report)."""
        return {
            "replay_id": self.replay_id, "status": self.status, "created": self.created,
            "finished": self.finished, "agent": self.agent, "mode": self.mode,
            "candidate": self.candidate, "progress": {"done": self.done, "total": self.total},
            "passed": self.passed, "error": self.error,
        }


def report_workspace(report: dict[str, Any]) -> str | None:
    """The workspace a stored report belongs to (a CLI report: the one all its runs share)."""
    ws = report.get("workspace")
    if isinstance(ws, str):
        return ws
    spaces = {r.get("workspace") for r in report.get("runs", [])}
    return spaces.pop() if len(spaces) == 1 else None


def report_state(report: dict[str, Any]) -> dict[str, Any]:
    """A stored report's job state (it finished)."""
    n = len(report.get("runs", []))
    return {
        "replay_id": report["replay_id"], "status": "finished", "created": report["created"],
        "finished": report.get("finished"), "agent": report.get("agent"), "mode": report.get("mode"),
        "candidate": report.get("candidate"), "progress": {"done": n, "total": n},
        "passed": report["gate"]["passed"], "error": None,
    }


def _none_match(workflow: str | None, req: ReplayStart, selection: Selection, what: str) -> str:
    """Why a replay found nothing to replay: no runs match, or the runs it passed over and why."""
    since = f" since {req.since}" if req.since else ""
    skipped = selection.not_replayable
    if not skipped:
        return f"no {what} of workflow {workflow!r} match{since}"
    reasons = "; ".join(sorted({n.reason for n in skipped})[:3])
    return f"none of the {len(skipped)} run(s) of workflow {workflow!r}{since} can be replayed: {reasons}"


def recorded_runs(store: LedgerStore, workspace: str, run_ids: Sequence[str],
                  finished_only: bool = True) -> list[RecordedRun]:
    """The given runs of one workspace, finished ones only unless ``finished_only`` is False
    (404 for a run missing or in another workspace)."""
    from replay.history import RecordedRun, event_of

    out: list[RecordedRun] = []
    for run_id in run_ids:
        rows = store.run_entries(workspace, run_id)
        if not rows:
            raise NotFoundError(f"no run {run_id!r}")
        run = RecordedRun(workspace, run_id)
        for row in rows:
            run.add(event_of(row))
        if finished_only and run.completed is None:
            raise BadParameter(f"run {run_id!r} has not completed; only finished runs replay")
        out.append(run)
    return out


def _policy_gate(req: ReplayStart) -> PolicyGate:
    """The gate of ``max_new_denials`` / ``max_new_approvals`` (422 naming a bad threshold)."""
    from replay.policy_replay import PolicyGate, Threshold

    try:
        return PolicyGate(*(None if v is None else Threshold.parse(str(v), name) for name, v in (
            ("max_new_denials", req.max_new_denials), ("max_new_approvals", req.max_new_approvals))))
    except PolicyReplayError as e:
        raise BadParameter(str(e)) from e


def _server_opa() -> str:
    """The opa this server runs policy replays with (503 when it has none)."""
    from replay.opa_build import configured as configured_opa

    try:
        found = configured_opa()
    except PolicyReplayError as e:
        raise Unavailable(f"policy replays cannot run on this server: {e}") from e
    if found is None:
        raise Unavailable("policy replays cannot run on this server: it has no opa binary "
                          "(install Open Policy Agent on its PATH, or set TACHO_OPA_BIN)")
    return found


class ReplayJobs:
    """Starts replays in one background worker (queued beyond it) and answers for their state."""

    def __init__(
        self,
        ledger: Ledger,
        reports: ReplayReports,
        clock: Callable[[], float],
        agents: Sequence[str],
        *,
        max_queued: int = 8,
        workers: int = 2,
        prices: PriceTable | None = None,
        models: Mapping[str, HttpModelConfig] | None = None,
        policies: PolicyService | None = None,
        runs: RunIndex | None = None,
    ) -> None:
        self.ledger = ledger
        self.policies = policies
        self.runs = runs  # the run index replay selects from (None: one built for each selection)
        self.prices = prices or PriceTable()
        self.http_models = dict(models or {})
        self.reports = reports
        self.clock = clock
        self.agents = tuple(agents)
        self.max_queued = max_queued
        self.workers = workers
        self.jobs: dict[str, ReplayJob] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _agent(self, ref: str, prompts: dict[str, str]) -> AgentSpec:
        from tachograph.agents import load_agent

        if ref not in self.agents:
            raise BadParameter(
                f"agent {ref!r} is not on this server's replay allow-list; allowed: "
                f"{', '.join(self.agents) or 'none (set TACHO_REPLAY_AGENTS)'}"
            )
        try:
            spec = load_agent(ref)  # only ever an allow-listed reference
        except AgentLoadError as e:
            raise Unavailable(f"allow-listed agent cannot be loaded: {e}") from e
        if prompts:
            try:
                spec = spec.with_prompts(prompts)
            except PromptError as e:
                raise BadParameter(str(e)) from e
        return spec

    def models(self) -> ModelRegistry:
        """The models a replay may name: simulated ones and the server's configured ones."""
        return model_registry(self.http_models, self.prices)

    def _models(self, model: str | None, allow_unpriced: bool) -> ModelRegistry:
        models = self.models()
        if model is not None:
            try:
                problem = models.price_problem(model)
            except UnknownModelError as e:
                raise BadParameter(str(e)) from e
            if problem is not None and not allow_unpriced:
                raise BadParameter(problem.replace("--allow-unpriced", "`allow_unpriced: true`"))
        return models

    def submit(self, workspace: str, key_id: str, req: ReplayStart) -> ReplayJob:
        """Check a request and queue its replay (raises 4xx errors before anything runs)."""
        from replay.engine import ReplayConfig
        from replay.report import Gate

        if req.mode == "policy":
            return self._submit_policy(workspace, key_id, req)
        given = [n for n, v in (("policy_revision", req.policy_revision), ("max_new_denials", req.max_new_denials),
                                ("max_new_approvals", req.max_new_approvals)) if v is not None]
        if given:
            raise BadParameter(f"{', '.join(given)}: only a policy replay (`\"mode\": \"policy\"`) takes them")
        gate = Gate(req.max_outcome_change, req.max_cost_increase, req.max_violation_increase,
                    req.max_response_change, req.max_tool_call_change)
        unmeasured = gate.unmeasured(req.mode == "steps")
        if unmeasured:
            raise BadParameter(f"{', '.join(unmeasured)}: not measured by a {req.mode} replay")
        if req.mode == "steps":
            return self._submit_steps(workspace, key_id, req, gate)
        if req.agent is None:
            raise BadParameter("a full replay needs `agent` (module:function); a step replay "
                               "(`\"mode\": \"steps\"`) needs none")
        spec = self._agent(req.agent, dict(req.prompts))
        models = self._models(req.model, req.allow_unpriced)
        workflow = req.workflow or (None if req.runs else spec.workflow)
        if workflow is None and not req.runs:
            raise BadParameter("give `workflow` or `runs` (the agent's module names no WORKFLOW)")
        chosen = recorded_runs(self.ledger.store, workspace, req.runs) if req.runs else None
        config = ReplayConfig(self._new_id(), iso(self.clock()), candidate_model=req.model, gate=gate,
                              workers=self.workers, allow_unpriced=req.allow_unpriced,
                              refresh_cache=req.no_cache)
        job = ReplayJob(config.replay_id, workspace, key_id, config.created, spec.ref, config.mode(spec),
                        config.candidate(spec))
        return self._queue(job, lambda: self._run(job, spec, models, config, workflow, req, chosen))

    def _submit_steps(self, workspace: str, key_id: str, req: ReplayStart, gate: Gate) -> ReplayJob:
        """Queue a step replay: no agent code, the recorded requests sent to ``model``."""
        from replay.steps import StepConfig

        if req.model is None:
            raise BadParameter("a step replay needs the candidate `model`")
        if req.agent is not None or req.prompts:
            raise BadParameter("a step replay sends the recorded requests as they were: no `agent` "
                               "or `prompts`")
        if req.workflow is None and not req.runs:
            raise BadParameter("give `workflow` or `runs`")
        models = self._models(req.model, req.allow_unpriced)
        chosen = recorded_runs(self.ledger.store, workspace, req.runs, finished_only=False) \
            if req.runs else None
        config = StepConfig(self._new_id(), iso(self.clock()), req.model, gate, self.workers,
                            refresh_cache=req.no_cache)
        job = ReplayJob(config.replay_id, workspace, key_id, config.created, None, "steps", config.candidate)
        return self._queue(job, lambda: self._run_steps(job, models, config, req, chosen))

    def _submit_policy(self, workspace: str, key_id: str, req: ReplayStart) -> ReplayJob:
        """Queue a what-if policy replay: every recorded action of the runs asked of a stored
        revision of the workspace (404 if it has none by that id; 503 if this server has no opa)."""
        from replay.revision_replay import candidate_of

        if req.policy_revision is None:
            raise BadParameter("a policy replay needs `policy_revision`: a revision of the workspace's "
                               "policy (GET /v1/policy/revisions), e.g. 3-5f2a9c1e0b7d")
        others = [n for n, v in (("agent", req.agent), ("model", req.model),
                                 ("max_outcome_change", req.max_outcome_change),
                                 ("max_cost_increase", req.max_cost_increase),
                                 ("max_violation_increase", req.max_violation_increase),
                                 ("max_response_change", req.max_response_change),
                                 ("max_tool_call_change", req.max_tool_call_change)) if v is not None]
        others += [n for n, v in (("prompts", req.prompts), ("allow_unpriced", req.allow_unpriced),
                                  ("no_cache", req.no_cache)) if v]
        if others:
            raise BadParameter(f"{', '.join(others)}: a policy replay re-asks recorded actions of a "
                               "policy revision; it runs no agent code and calls no model")
        if req.workflow is None and not req.runs:
            raise BadParameter("give `workflow` or `runs`")
        gate = _policy_gate(req)
        if self.policies is None:
            raise Unavailable("policy replays are not available on this server (no policy service)")
        rev = self.policies.revision(workspace, req.policy_revision)
        binary = _server_opa()
        chosen = recorded_runs(self.ledger.store, workspace, req.runs) if req.runs else None
        job = ReplayJob(self._new_id(), workspace, key_id, iso(self.clock()), None, "policy",
                        candidate_of(rev.revision))
        return self._queue(job, lambda: self._run_policy(job, rev, binary, gate, req, chosen))

    def _new_id(self) -> str:
        now = self.clock()
        return "rp-" + datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)

    def _queue(self, job: ReplayJob, work: Callable[[], None]) -> ReplayJob:
        with self._lock:
            active = sum(1 for j in self.jobs.values() if j.status in ("queued", "running"))
            if active >= self.max_queued:
                raise BackpressureError(
                    f"{active} replays are queued or running (limit {self.max_queued}); retry later"
                )
            self.jobs[job.replay_id] = job
            self._trim()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tacho-replay")
            self._pool.submit(work)
        return job

    def _trim(self) -> None:
        done = [j for j in self.jobs.values() if j.status in ("finished", "failed")]
        for j in done[: max(0, len(done) - KEEP_FINISHED)]:
            del self.jobs[j.replay_id]

    def _load(self, workspace: str, workflow: str | None, req: ReplayStart,
              finished_only: bool = True) -> list[RecordedRun]:
        """The workspace's production runs of ``workflow`` (``since``), oldest first."""
        from replay.history import load_runs

        return [r for r in load_runs(self.ledger.store, workflow=workflow, since=req.since,
                                     finished_only=finished_only, index=self.runs, workspace=workspace)
                if r.workspace == workspace]

    def _run(self, job: ReplayJob, spec: AgentSpec, models: ModelRegistry, config: ReplayConfig,
             workflow: str | None, req: ReplayStart, chosen: list[RecordedRun] | None) -> None:
        from replay.engine import run_replay
        from replay.selection import select_runs

        def work() -> tuple[dict[str, Any], ReplayAnswers | None]:
            given = chosen if chosen is not None else self._load(job.workspace, workflow, req)
            selection = select_runs(given, spec, req.limit)
            if not selection.runs:
                raise BadParameter(_none_match(workflow, req, selection, "finished runs"))
            job.total = len(selection.runs)
            answers = ReplayAnswers()
            cache = ResponseCache(self.reports.directory / "cache.db")
            try:
                report = run_replay(selection.runs, spec, config, models, ledger=self.ledger,
                                    progress=job.advance, not_replayable=selection.not_replayable,
                                    cache=cache, answers=answers)
            finally:
                cache.close()
            self.ledger.checkpoint(force=True)
            return report, answers
        self._finish(job, work)

    def _run_steps(self, job: ReplayJob, models: ModelRegistry, config: StepConfig, req: ReplayStart,
                   chosen: list[RecordedRun] | None) -> None:
        from replay.selection import select_runs
        from replay.steps import run_step_replay

        def work() -> tuple[dict[str, Any], ReplayAnswers | None]:
            given = chosen if chosen is not None else self._load(job.workspace, req.workflow, req, False)
            selection = select_runs(given, None, req.limit)
            if not selection.runs:
                raise BadParameter(_none_match(req.workflow, req, selection, "production runs"))
            job.total = len(selection.runs)
            answers = ReplayAnswers()
            cache = ResponseCache(self.reports.directory / "cache.db")
            try:
                report = run_step_replay(selection.runs, config, models, progress=job.advance,
                                         skipped=[n.to_json() for n in selection.not_replayable],
                                         cache=cache, answers=answers)
            finally:
                cache.close()
            return report, answers
        self._finish(job, work)

    def _run_policy(self, job: ReplayJob, rev: Revision, binary: str, gate: PolicyGate,
                    req: ReplayStart, chosen: list[RecordedRun] | None) -> None:
        from replay.revision_replay import what_if_revision

        def work() -> tuple[dict[str, Any], ReplayAnswers | None]:
            given = chosen if chosen is not None else self._load(job.workspace, req.workflow, req)
            given = given[: req.limit] if req.limit else given
            if not given:
                since = f" since {req.since}" if req.since else ""
                raise BadParameter(f"no finished production runs of workflow {req.workflow!r} match{since}")
            job.total = len(given)
            report = what_if_revision(given, rev, job.workspace, replay_id=job.replay_id,
                                      created=job.created, gate=gate, binary=binary)
            job.advance(len(given))
            return report, None
        self._finish(job, work)

    def _finish(self, job: ReplayJob,
                work: Callable[[], tuple[dict[str, Any], ReplayAnswers | None]]) -> None:
        """Run a job's work, store its report, and record how it ended."""
        job.status = "running"
        try:
            report, answers = work()
            report["workspace"] = job.workspace
            report["finished"] = iso(self.clock())
            self.reports.save(report, answers)
            job.passed = bool(report["gate"]["passed"])
            job.finished = report["finished"]
            job.status = "finished"
        except TachographError as e:
            job.error, job.finished, job.status = f"{type(e).__name__}: {e}", iso(self.clock()), "failed"
        except Exception as e:  # agent code is user code: its bug fails the job, visibly
            log.exception("replay %s failed", job.replay_id)
            job.error, job.finished, job.status = f"{type(e).__name__}: {e}", iso(self.clock()), "failed"

    def state(self, workspace: str, replay_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A replay's state and, once finished, its report (404 if not this workspace's)."""
        job = self.jobs.get(replay_id)
        if job is not None and job.workspace != workspace:
            raise NotFoundError(f"no replay {replay_id!r}")
        if job is not None and job.status != "finished":
            return job.to_json(), None
        try:
            report = self.reports.load(replay_id)
        except ReplayNotFoundError as e:
            raise NotFoundError(f"no replay {replay_id!r}") from e
        if report_workspace(report) != workspace:
            raise NotFoundError(f"no replay {replay_id!r}")
        return (job.to_json() if job is not None else report_state(report)), report

    def list(self, workspace: str) -> list[dict[str, Any]]:
        """Every replay of a workspace: stored reports and jobs in memory, oldest first."""
        out: dict[str, dict[str, Any]] = {}
        directory = self.reports.directory
        if directory.exists():
            for path in sorted(directory.glob("*.json")):
                report = loads(path.read_bytes())  # saved atomically: never half-written
                if report_workspace(report) == workspace:
                    out[report["replay_id"]] = report_state(report)
        for job in list(self.jobs.values()):
            if job.workspace == workspace:
                out[job.replay_id] = job.to_json()
        return sorted(out.values(), key=lambda r: (r["created"], r["replay_id"]))

    def wait(self, timeout: float = 60.0) -> None:
        """Block until no replay is queued or running (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while any(j.status in ("queued", "running") for j in list(self.jobs.values())):
            if time.monotonic() > deadline:
                raise TimeoutError("replays still running")
            time.sleep(0.02)

    def close(self) -> None:
        """Stop taking replays and wait for the running one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
