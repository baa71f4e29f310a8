"""Replay commands: ``tacho replay`` (fidelity / what-if / release gate), ``replay show``, ``replay list``."""

from __future__ import annotations

import os
import secrets
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer

from api.bootstrap import build_ledger
from api.cli_ledger import progress_bar
from api.cli_policy_replay import policy_gate, policy_replay
from api.model_config import (
    CandidateOptions,
    configured_models,
    model_registry,
    price_table,
    response_cache,
    with_candidate,
)
from api.output import JsonOpt, console, err_console, print_json
from api.read_side import run_index
from api.settings import Settings
from domain.ledger import Ledger, iso
from replay.cache import ReplayAnswers
from replay.engine import ReplayConfig, check_prices, run_replay
from replay.errors import UnpricedModelError
from replay.history import RecordedRun, load_runs
from replay.render import render_answers, render_report
from replay.report import Gate, estimate
from replay.selection import Selection, recorded_entry_point, select_runs
from replay.steps import StepConfig, run_step_replay
from replay.store import ReplayReports
from tachograph.agents import AgentSpec, load_agent, read_prompt_overrides
from tachograph.models import ModelRegistry

replay_app = typer.Typer(help="Replay recorded runs against new models or prompts; gate releases on the diff.")


def _rate(value: str | None, option: str) -> Decimal | None:
    if value is None:
        return None
    try:
        rate = Decimal(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    except InvalidOperation:
        raise typer.BadParameter(f"{option} must be a rate like 0.05 or 5%, got {value!r}") from None
    return rate


def _usd(cost: Decimal | None, unpriced: int) -> str:
    """A total cost, or why it is unknown."""
    return f"${cost}" if cost is not None else f"unknown ({unpriced} model call(s) with no price)"


def _load(ledger: Ledger, **kw: Any) -> list[RecordedRun]:
    """Recorded runs (``load_runs``), selected from the data dir's run index (which resumes from
    its recorded position: only entries appended since it last ran are read)."""
    index = run_index(Settings(), ledger.store)
    try:
        return load_runs(ledger.store, index=index, **kw)
    finally:
        index.close()


def _reports(settings: Settings) -> ReplayReports:
    return ReplayReports(settings.data_dir / "replays")


@replay_app.callback(invoke_without_command=True)
def cmd_replay(
    ctx: typer.Context,
    workflow: Annotated[str | None, typer.Option(help="replay production runs of this workflow")] = None,
    agent: Annotated[str | None, typer.Option(help="agent code as module:function (default: the entry point the newest run recorded)")] = None,
    since: Annotated[str | None, typer.Option(help="only runs started at or after this RFC 3339 date/time")] = None,
    runs: Annotated[list[str] | None, typer.Option("--runs", "--run", help="replay these run ids (repeatable)")] = None,
    limit: Annotated[int | None, typer.Option(help="at most N runs (oldest first)")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="candidate prompt NAME=FILE (repeatable)")] = None,
    # -- the candidate model, its price and the response cache (docs/replay.md#real-models) --
    model: Annotated[str | None, typer.Option(help="candidate model (what-if replay): simulated, in the models file, or with --base-url")] = None,
    models_file: Annotated[Path | None, typer.Option("--models", help="models file of OpenAI-compatible endpoints (default: TACHO_MODELS)")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", "--model-url", help="OpenAI-compatible base URL for --model")] = None,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", "--model-key-env", help="env var holding the API key for --model")] = None,
    model_price: Annotated[str | None, typer.Option("--model-price", help="price of --model: IN,OUT USD per million input,output tokens")] = None,
    model_free: Annotated[bool, typer.Option("--model-free", help="--model costs nothing (self-hosted)")] = False,
    model_param: Annotated[list[str] | None, typer.Option("--model-param", help="request parameter KEY=VALUE for --model, e.g. max_tokens=64 (repeatable)")] = None,
    allow_unpriced: Annotated[bool, typer.Option("--allow-unpriced", help="call models with no known price (calls recorded unpriced) instead of refusing")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="call real models again, ignoring (and refreshing) the response cache")] = False,
    prices: Annotated[Path | None, typer.Option(help="JSON price file over genai-prices' catalogue (default: TACHO_PRICES)")] = None,
    max_outcome_change: Annotated[str | None, typer.Option(help="gate: max outcome change rate (0.05 or 5%)")] = None,
    max_cost_increase: Annotated[str | None, typer.Option(help="gate: max relative total cost increase")] = None,
    max_violation_increase: Annotated[str | None, typer.Option(help="gate: max violation rate increase (absolute)")] = None,
    estimate_only: Annotated[bool, typer.Option("--estimate", help="price the replay from recorded tokens; run nothing")] = False,
    workers: Annotated[int, typer.Option(min=1, help="parallel replays")] = 2,
    replay_id: Annotated[str | None, typer.Option("--id", help="replay id (default: generated)")] = None,
    steps: Annotated[bool, typer.Option("--steps", help="step replay: re-send each recorded model request to --model (no agent code)")] = False,
    max_response_change: Annotated[str | None, typer.Option(help="gate (--steps): max response change rate")] = None,
    max_tool_call_change: Annotated[str | None, typer.Option(help="gate (--steps): max tool-call change rate")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="what-if policy replay: a candidate policy (.rego file, bundle directory, or a revision id of the local ledger such as 3-5f2a9c1e0b7d) asked about every recorded tool call and change")] = None,
    opa_url: Annotated[str | None, typer.Option("--opa-url", help="(--policy) an OPA already loaded with the candidate, instead of starting one")] = None,
    policy_rule: Annotated[str, typer.Option("--policy-rule", help="(--policy) the rule OPA is asked (package path, then rule)")] = "tachograph/decision",
    max_new_denials: Annotated[str | None, typer.Option(help="gate (--policy): max newly denied actions, a count N or a rate R% / 0.05")] = None,
    max_new_approvals: Annotated[str | None, typer.Option(help="gate (--policy): max actions newly needing approval, a count N or a rate R% / 0.05")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Replay recorded runs: fidelity with no candidate, what-if with --model/--prompt,
    --steps: each recorded model request sent again to --model, or --policy: each recorded
    tool call and change asked of a candidate policy."""
    if ctx.invoked_subcommand is not None:
        return
    if workflow is None and not runs:
        raise typer.BadParameter("give --workflow W (or --runs ID...)")
    if policy is not None or opa_url or max_new_denials is not None or max_new_approvals is not None:
        _refuse_mixed(policy, model=model, prompt=prompt, steps=steps, agent=agent, estimate=estimate_only,
                      gates=(max_outcome_change, max_cost_increase, max_violation_increase,
                             max_response_change, max_tool_call_change))
        assert policy is not None
        settings = Settings()
        rid = replay_id or f"rp-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        raise typer.Exit(policy_replay(
            build_ledger(settings), settings, policy=policy, opa_url=opa_url, rule=policy_rule,
            gate=policy_gate(max_new_denials, max_new_approvals), rid=rid, workflow=workflow,
            since=since, runs=runs or [], limit=limit, json_out=json_out))
    gate = _gate(steps, max_outcome_change, max_cost_increase, max_violation_increase,
                 max_response_change, max_tool_call_change)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # agent modules live in the user's project
    settings = Settings()
    candidate = CandidateOptions(model, base_url, api_key_env, model_price, model_free, tuple(model_param or ()))
    models = model_registry(with_candidate(configured_models(models_file or settings.models), candidate),
                            price_table(prices or settings.prices))
    if model:
        models.get(model)  # fail fast on an unknown candidate
    ledger = build_ledger(settings)
    rid = replay_id or f"rp-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    if steps and estimate_only:
        raise typer.BadParameter("--estimate prices a full replay; a step replay's cost is in its report")
    if steps:
        problem = models.price_problem(model) if model else None
        if problem is not None and not allow_unpriced:  # before anything is called, as full replays
            raise UnpricedModelError(problem + " (nothing was called)")
        raise typer.Exit(_step_replay(ledger, models, settings, gate, model, rid, workflow, since,
                                      runs or [], limit, workers, agent, prompt, json_out, no_cache))
    spec, selection = _full_selection(ledger, agent, prompt, workflow, since, runs or [], limit)
    recorded = selection.runs
    if estimate_only:
        est = estimate(recorded, model, models.prices)
        failures = gate.failures({"cost_increase": est["cost_increase"],
                                  "unpriced_calls": est["unpriced_calls"]})
        est["gate"] = {"passed": not failures, "failures": failures}
        if json_out:
            print_json(est)
        else:
            console().print(
                f"{est['runs']} runs, {est['model_calls']} model calls, {est['input_tokens']} in / "
                f"{est['output_tokens']} out tokens: recorded "
                f"{_usd(est['cost_before_usd'], est['unpriced_calls_before'])}, estimated on "
                f"{model or 'the recorded models'} "
                f"{_usd(est['cost_estimated_usd'], est['unpriced_calls_estimated'])}"
            )
            for f in failures:
                console().print(f"[red]gate failed:[/] {f}")
        raise typer.Exit(1 if failures else 0)
    config = ReplayConfig(rid, iso(time.time()), candidate_model=model, gate=gate, workers=workers,
                          allow_unpriced=allow_unpriced, refresh_cache=no_cache)
    check_prices(recorded, spec, config, models)  # before the progress bar: nothing is called
    answers = ReplayAnswers()
    cache = response_cache(settings.data_dir)
    try:
        with progress_bar(len(recorded), "replaying") as bar:
            task = bar.add_task("replay", total=len(recorded))
            report = run_replay(recorded, spec, config, models, ledger=ledger,
                                progress=lambda n: bar.advance(task, n),
                                not_replayable=selection.not_replayable, cache=cache, answers=answers)
    finally:
        cache.close()
    ledger.checkpoint(force=True)
    _reports(settings).save(report, answers)
    if json_out:
        print_json(report)
    else:
        render_report(report, console())
        err_console().print(f"stored: tacho replay show {rid}")
    raise typer.Exit(0 if report["gate"]["passed"] else 1)


@replay_app.command("show")
def cmd_show(
    replay_id: Annotated[str, typer.Argument(help="replay id")],
    answers: Annotated[bool, typer.Option("--answers", help="the model answers the replay used (kept with it)")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Print a stored replay's report, or the real models' answers it used."""
    reports = _reports(Settings())
    if answers:
        kept = reports.answers(replay_id)
        if json_out:
            print_json(kept)
        else:
            render_answers(kept, console())
        return
    report = reports.load(replay_id)
    if json_out:
        print_json(report)
    else:
        render_report(report, console())


@replay_app.command("cache")
def cmd_cache(
    clear: Annotated[bool, typer.Option("--clear", help="forget every cached answer")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The response cache of real models' answers (replays/cache.db): its size, or clear it."""
    cache = response_cache(Settings().data_dir)
    try:
        out = {"path": str(cache.path), **cache.stats()}
        if clear:
            out["cleared"] = cache.clear()
            out.update(cache.stats())
    finally:
        cache.close()
    if json_out:
        print_json(out)
    else:
        console().print(f"{out['path']}: {out['entries']} answers, {out['bytes']} bytes"
                        + (f" ({out['cleared']} cleared)" if clear else ""))


@replay_app.command("list")
def cmd_list(json_out: JsonOpt = False) -> None:
    """List stored replays, oldest first."""
    rows = _reports(Settings()).list()
    if json_out:
        print_json(rows)
        return
    c = console()
    if not rows:
        c.print("no replays yet; run `tacho replay --workflow W --agent module:function`")
    for r in rows:
        mark = "[green]passed[/]" if r["passed"] else "[red]failed[/]"
        c.print(f"{r['replay_id']}  {r['created']}  {r['mode']:<8} {r['runs']:>6} runs  "
                f"change {r['outcome_change_rate'] if r['outcome_change_rate'] is not None else '—'}  {mark}  {r['candidate']}")


# --- run selection and step replay (issue 15: which runs, by which code; runs without code) ---
def _gate(steps: bool, *rates: str | None) -> Gate:
    """The gate of the options, refusing thresholds this kind of replay cannot judge."""
    names = ("--max-outcome-change", "--max-cost-increase", "--max-violation-increase",
             "--max-response-change", "--max-tool-call-change")
    gate = Gate(*(_rate(v, n) for v, n in zip(rates, names, strict=True)))
    unmeasured = gate.unmeasured(steps)
    if unmeasured:
        options = ", ".join("--" + u.replace("_", "-") for u in unmeasured)
        raise typer.BadParameter(
            f"{options}: a step replay sees single model calls, not outcomes or policy decisions "
            "(use a full replay)" if steps else f"{options}: only a step replay (--steps) measures that")
    return gate


def _refuse_mixed(policy: Path | None, *, model: str | None, prompt: list[str] | None, steps: bool,
                  agent: str | None, estimate: bool, gates: tuple[str | None, ...]) -> None:
    """A policy replay runs no agent code and calls no model: refuse options that would."""
    if policy is None:
        raise typer.BadParameter("--opa-url, --max-new-denials and --max-new-approvals need --policy PATH|REVISION")
    if model or prompt or steps or agent or estimate or any(g is not None for g in gates):
        raise typer.BadParameter(
            "--policy re-asks recorded actions of a candidate policy; it takes no --model, --prompt, "
            "--agent, --steps, --estimate or model-replay gates (run a model replay separately)")


def _full_selection(ledger: Ledger, agent: str | None, prompt: list[str] | None, workflow: str | None,
                    since: str | None, runs: list[str], limit: int | None) -> tuple[AgentSpec, Selection]:
    """The agent code (``--agent``, else the entry point the newest run recorded) and the
    production runs it can replay; runs recorded by other code are reported, not replayed."""
    candidates = _load(ledger, workflow=workflow, since=since, run_ids=runs)
    if not candidates:
        raise typer.BadParameter(f"no finished production runs of workflow {workflow!r} match")
    ref = agent or recorded_entry_point(candidates)
    if ref is None:
        raise typer.BadParameter(
            f"no run of {workflow or 'the given runs'} names its agent code (entry_point): give "
            "--agent module:function, or step-replay the model calls with --steps --model M")
    spec = load_agent(ref)
    overrides = read_prompt_overrides(prompt or [])
    if overrides:
        spec = spec.with_prompts(overrides)
    selection = select_runs(candidates, spec, limit)
    if not selection.runs:
        reasons = sorted({n.reason for n in selection.not_replayable})
        raise typer.BadParameter(
            f"none of the {len(selection.not_replayable)} run(s) is replayable by {spec.ref}: "
            + "; ".join(reasons[:3]))
    return spec, selection


def _step_replay(ledger: Ledger, models: ModelRegistry, settings: Settings, gate: Gate, model: str | None,
                 rid: str, workflow: str | None, since: str | None, runs: list[str], limit: int | None,
                 workers: int, agent: str | None, prompt: list[str] | None, json_out: bool,
                 no_cache: bool = False) -> int:
    """``tacho replay --steps``: every recorded model request of the runs sent to ``model``;
    stores the report and returns the exit code (1: the gate failed)."""
    if model is None:
        raise typer.BadParameter("--steps needs the candidate: --model NAME")
    if agent or prompt:
        raise typer.BadParameter("--steps sends the recorded requests as they were: it takes no --agent "
                                 "or --prompt (a full replay does)")
    candidates = _load(ledger, workflow=workflow, since=since, run_ids=runs, finished_only=False)
    selection = select_runs(candidates, None, limit)
    if not selection.runs:
        raise typer.BadParameter(f"no production runs of workflow {workflow!r} match")
    config = StepConfig(rid, iso(time.time()), model, gate, workers, refresh_cache=no_cache)
    answers = ReplayAnswers()
    cache = response_cache(settings.data_dir)
    try:
        with progress_bar(len(selection.runs), "step replay") as bar:
            task = bar.add_task("steps", total=len(selection.runs))
            report = run_step_replay(selection.runs, config, models, progress=lambda n: bar.advance(task, n),
                                     skipped=[n.to_json() for n in selection.not_replayable],
                                     cache=cache, answers=answers)
    finally:
        cache.close()
    _reports(settings).save(report, answers)
    if json_out:
        print_json(report)
    else:
        render_report(report, console())
        err_console().print(f"stored: tacho replay show {rid}")
    return 0 if report["gate"]["passed"] else 1


def register(app: typer.Typer) -> None:
    """Add the ``replay`` command group."""
    app.add_typer(replay_app, name="replay")
