"""The replay diff report for people at a terminal (rich)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: Any) -> str:
    return "—" if value is None else f"{float(value) * 100:.1f}%"


def _usd(value: Any) -> str:
    return "—" if value is None else f"${format(Decimal(str(value)), 'f')}"


def render_report(report: Mapping[str, Any], console: Console, max_runs: int = 20) -> None:
    """Print a replay's headline figures, before/after table, gate and changed runs."""
    if report.get("mode") == "steps":
        render_step_report(report, console, max_runs)
        return
    if report.get("mode") == "policy":
        render_policy_report(report, console, max_runs)
        return
    s = report["summary"]
    b, a = s["before"], s["after"]
    console.print(
        f"[bold]replay {report['replay_id']}[/] ({report['mode']}) of {s['runs']} run(s) "
        f"with {report['agent']} — candidate: {report['candidate']}"
    )
    t = Table(show_edge=False)
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    rows = (
        ("success rate", _pct(b["success_rate"]), _pct(a["success_rate"])),
        ("acceptance rate", _pct(b["acceptance_rate"]), _pct(a["acceptance_rate"])),
        ("cost", _usd(b["cost_usd"]), _usd(a["cost_usd"])),
        ("cost per successful outcome", _usd(b["cost_per_success"]), _usd(a["cost_per_success"])),
        ("model calls with no price", str(b.get("unpriced_calls", 0)), str(a.get("unpriced_calls", 0))),
        ("violation rate", _pct(b["violation_rate"]), _pct(a["violation_rate"])),
        ("policy denials", str(b["denials"]), str(a["denials"])),
        ("approvals requested", str(b["approvals"]), str(a["approvals"])),
        ("tokens", str(b["tokens"]), str(a["tokens"])),
        ("model + tool latency (ms)", str(b["latency_ms"]), str(a["latency_ms"])),
    )
    for row in rows:
        t.add_row(*row)
    console.print(t)
    console.print(
        f"outcome change rate [bold]{_pct(s['outcome_change_rate'])}[/], "
        f"cost change {_pct(s['cost_increase'])}, statuses {s['statuses']}, "
        f"runs now needing approval {s['approvals_now_required_runs']}"
    )
    answers = report.get("answers")
    if answers and (answers["cached"] or answers["fresh"]):
        console.print(
            f"model answers over HTTP: {answers['cached']} from the cache, {answers['fresh']} fresh "
            f"({answers['kept']} kept with the replay: tacho replay show {report['replay_id']} --answers)"
        )
    changed = [r for r in report["runs"] if r["changed"] or r["first_divergence"]]
    if changed:
        ct = Table(title="changed or diverged runs", show_edge=False)
        for col in ("run", "status", "outcome", "first divergence"):
            ct.add_column(col)
        for r in changed[:max_runs]:
            d = r["first_divergence"]
            where = "—" if d is None else f"seq {d['seq']} ({d['kind']}): expected {_short(d['expected'])}, got {_short(d['actual'])}"
            ct.add_row(r["run_id"], r["status"], f"{r['before']['outcome']} → {r['after']['outcome']}", where)
        console.print(ct)
        if len(changed) > max_runs:
            console.print(f"… and {len(changed) - max_runs} more (use --json)")
    _versions(report, console)
    _not_replayable(report, console, max_runs)
    _gate(report, console)


def _versions(report: Mapping[str, Any], console: Console) -> None:
    s = report["summary"]
    other = s.get("other_version_runs")
    if other:
        versions = ", ".join(f"{v or 'none'} ×{n}" for v, n in s["recorded_versions"].items())
        console.print(
            f"[yellow]{other} run(s) were recorded by another version of the agent[/] "
            f"(recorded: {versions}; the code is {report.get('agent_version')})"
        )


def _not_replayable(report: Mapping[str, Any], console: Console, max_runs: int) -> None:
    skipped = report.get("not_replayable") or []
    if not skipped:
        return
    who = f"by {report['agent']}" if report.get("agent") else "(not production runs)"
    console.print(f"[yellow]{len(skipped)} run(s) not replayable {who}[/] — not counted above:")
    for n in skipped[:max_runs]:
        console.print(f"  {n['run_id']}: {n['reason']}")
    if len(skipped) > max_runs:
        console.print(f"  … and {len(skipped) - max_runs} more (use --json)")


def render_step_report(report: Mapping[str, Any], console: Console, max_runs: int = 20) -> None:
    """Print a step replay: change rates, tokens and cost before/after, changed calls, gate."""
    s = report["summary"]
    b, a = s["before"], s["after"]
    console.print(
        f"[bold]step replay {report['replay_id']}[/] of {s['model_calls']} model call(s) in {s['runs']} "
        f"run(s) — candidate: {report['candidate']}"
    )
    console.print(
        f"sent again {s['replayed_calls']}, compared {s['compared_calls']}, errors {s['errors']}, "
        f"not replayable {s['unreplayable_calls']} {s['unreplayable_reasons'] or ''}"
    )
    t = Table(show_edge=False)
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row("input tokens", str(b["input_tokens"]), str(a["input_tokens"]))
    t.add_row("output tokens", str(b["output_tokens"]), str(a["output_tokens"]))
    t.add_row("cost", _usd(b["cost_usd"]), _usd(a["cost_usd"]))
    t.add_row("model calls with no price", str(b["unpriced_calls"]), str(a["unpriced_calls"]))
    console.print(t)
    console.print(
        f"response change rate [bold]{_pct(s['response_change_rate'])}[/], tool-call change rate "
        f"{_pct(s['tool_call_change_rate'])} (choice {_pct(s['tool_choice_change_rate'])}), "
        f"cost change {_pct(s['cost_increase'])}"
    )
    changed = [c for r in report["runs"] for c in r["calls"] if c["response_changed"] or c["status"] == "error"]
    if changed:
        ct = Table(title="changed answers", show_edge=False)
        for col in ("run", "seq", "tool calls", "before", "after"):
            ct.add_column(col)
        for c in changed[:max_runs]:
            tools = "choice" if c["tool_choice_changed"] else "args" if c["tool_args_changed"] else "—"
            after = c["reason"] if c["status"] == "error" else _answer(c["after"])
            ct.add_row(c["run_id"], str(c["seq"]), tools, _short(_answer(c["before"]), 40), _short(after, 40))
        console.print(ct)
        if len(changed) > max_runs:
            console.print(f"… and {len(changed) - max_runs} more (use --json)")
    _not_replayable(report, console, max_runs)
    _gate(report, console)


def _answer(side: Mapping[str, Any] | None) -> str:
    if not side:
        return "—"
    calls = side.get("tool_calls") or []
    names = [str((c.get("function") or {}).get("name", "")) for c in calls if isinstance(c, Mapping)]
    text = str(side.get("content") or "")
    return text + (f" [calls {', '.join(names)}]" if names else "")


def render_policy_report(report: Mapping[str, Any], console: Console, max_runs: int = 20) -> None:
    """Print a what-if policy replay: per-decision changes in total and per run, changed actions, gate."""
    s = report["summary"]
    revisions = ", ".join(s["candidate_revisions"]) or "no bundle revision"
    console.print(
        f"[bold]policy replay {report['replay_id']}[/] of {s['evaluated']} action(s) in {s['runs']} "
        f"run(s) — candidate: {report['candidate']} ({revisions})"
    )
    t = Table(show_edge=False)
    for col in ("run", "actions", "newly denied", "newly need approval", "newly allowed", "unchanged",
                "not re-evaluated"):
        t.add_column(col, justify="left" if col == "run" else "right")
    rows = [r for r in report["runs"] if r["changed"]][:max_runs]
    for r in [*rows, {"run_id": "[bold]total[/]", **s}]:
        t.add_row(r["run_id"], str(r["evaluated"]),
                  *(f"{r[k]} ({_pct(r[k + '_rate'])})" for k in ("new_denials", "new_approvals",
                                                               "new_allows", "unchanged")),
                  str(r["not_reevaluated"]))
    console.print(t)
    for r in rows:
        for c in r["changed"]:
            never = "" if c.get("ran", True) else " (never ran)"
            console.print(f"  {r['run_id']} seq {c['seq']} {c['kind']} {c['name']}{never} "
                          f"{_short(c['arguments'])}: {c['before']} → {c['after']} ({c['reason']})")
    if s["not_reevaluated"]:
        whys = sorted({str(a.get("why", "no arguments recorded")) for r in report["runs"]
                       for a in r.get("not_reevaluated_actions", [])})
        console.print(f"{s['not_reevaluated']} action(s) the recorded policy blocked could not be "
                      f"re-asked: {'; '.join(whys)}")
    _gate(report, console)


def _gate(report: Mapping[str, Any], console: Console) -> None:
    gate = report["gate"]
    if gate["passed"]:
        console.print("[green]gate passed[/]")
    else:
        for f in gate["failures"]:
            console.print(f"[red]gate failed:[/] {f}")


def render_answers(kept: Mapping[str, Any], console: Console, max_chars: int = 200) -> None:
    """Print the model answers a replay kept: source, model, the last message and the answer."""
    console.print(
        f"[bold]replay {kept['replay_id']}[/]: {kept['cached']} answer(s) from the cache, "
        f"{kept['fresh']} fresh; {kept['kept']} kept" + (f", {kept['dropped']} not kept (over the bound)"
                                                         if kept["dropped"] else "")
    )
    t = Table(show_edge=False)
    for col in ("source", "model", "last message", "answer", "tokens in/out", "ms"):
        t.add_column(col)
    for a in kept["answers"]:
        body, r = a["request"]["body"], a["response"]
        last = body["messages"][-1].get("content", "") if body.get("messages") else ""
        t.add_row(a["source"], str(body.get("model")), _short(last, max_chars // 2),
                  _short(r["content"], max_chars), f"{r['input_tokens']}/{r['output_tokens']}",
                  str(r["latency_ms"]))
    console.print(t)


def _short(value: Any, n: int = 70) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 1] + "…"
