"""Replay commands: ``tacho replay`` (fidelity / what-if / release gate), ``replay show``, ``replay list``."""

from __future__ import annotations

import os
import secrets
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer

from api.bootstrap import build_ledger
from api.cli_ledger import JsonOpt, progress_bar
from api.model_config import (
    CandidateOptions,
    configured_models,
    model_registry,
    price_table,
    response_cache,
    with_candidate,
)
from api.output import console, err_console, print_json
from api.settings import Settings
from domain.ledger import iso
from replay.cache import ReplayAnswers
from replay.engine import ReplayConfig, check_prices, run_replay
from replay.history import load_runs
from replay.render import render_answers, render_report
from replay.report import Gate, estimate
from replay.store import ReplayReports
from tachograph.agents import load_agent, read_prompt_overrides

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


def _reports(settings: Settings) -> ReplayReports:
    return ReplayReports(settings.data_dir / "replays")


@replay_app.callback(invoke_without_command=True)
def cmd_replay(
    ctx: typer.Context,
    workflow: Annotated[str | None, typer.Option(help="replay runs of this workflow")] = None,
    agent: Annotated[str | None, typer.Option(help="agent code as module:function")] = None,
    since: Annotated[str | None, typer.Option(help="only runs started at or after this RFC 3339 date/time")] = None,
    runs: Annotated[list[str] | None, typer.Option("--runs", help="replay these run ids (repeatable)")] = None,
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
    json_out: JsonOpt = False,
) -> None:
    """Replay recorded runs: fidelity with no candidate, what-if with --model/--prompt."""
    if ctx.invoked_subcommand is not None:
        return
    if agent is None or (workflow is None and not runs):
        raise typer.BadParameter("give --agent module:function and --workflow W (or --runs ID...)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # agent modules live in the user's project
    settings = Settings()
    spec = load_agent(agent)
    overrides = read_prompt_overrides(prompt or [])
    if overrides:
        spec = spec.with_prompts(overrides)
    candidate = CandidateOptions(model, base_url, api_key_env, model_price, model_free, tuple(model_param or ()))
    models = model_registry(with_candidate(configured_models(models_file or settings.models), candidate),
                            price_table(prices or settings.prices))
    if model:
        models.get(model)  # fail fast on an unknown candidate
    ledger = build_ledger(settings)
    recorded = load_runs(ledger.store, workflow=workflow, since=since, run_ids=runs or (), limit=limit)
    if not recorded:
        raise typer.BadParameter(f"no finished runs of workflow {workflow!r} match")
    gate = Gate(
        _rate(max_outcome_change, "--max-outcome-change"),
        _rate(max_cost_increase, "--max-cost-increase"),
        _rate(max_violation_increase, "--max-violation-increase"),
    )
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
    rid = replay_id or f"rp-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    config = ReplayConfig(rid, iso(time.time()), candidate_model=model, gate=gate, workers=workers,
                          allow_unpriced=allow_unpriced, refresh_cache=no_cache)
    check_prices(recorded, spec, config, models)  # before the progress bar: nothing is called
    answers = ReplayAnswers()
    cache = response_cache(settings.data_dir)
    try:
        with progress_bar(len(recorded), "replaying") as bar:
            task = bar.add_task("replay", total=len(recorded))
            report = run_replay(recorded, spec, config, models, ledger=ledger,
                                progress=lambda n: bar.advance(task, n), cache=cache, answers=answers)
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
                f"change {r['outcome_change_rate']}  {mark}  {r['candidate']}")


def register(app: typer.Typer) -> None:
    """Add the ``replay`` command group."""
    app.add_typer(replay_app, name="replay")
