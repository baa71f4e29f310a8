"""Benchmark: the agent runtime's overhead per step, on each transport, and the approval round trip.

    .venv/bin/python bench/runtime.py [--runs 200] [--approvals 40] [--json]

Baseline measured in the same run: the same agent function over a bare context that calls the
same tools and the same simulated model and records nothing. Each transport then runs the same
runs through ``tachograph.Runtime``: ``memory`` (events built, validated and kept in memory: the
runtime's own cost), ``embedded`` (appended to a SQLite ledger in this process), ``http``
(``POST /v1/events`` to a ``tacho serve`` subprocess), ``kafka`` (the idempotent producer to the
embedded Kafka broker, Tansu). Reported: microseconds per step and the ratio to the baseline's.

Approval round trip: an agent thread waits on ``ctx.request_approval`` through ``tacho serve``
(long poll); the bench decides with ``POST /v1/approvals/{id}/decision`` and measures from the
moment the decision request is sent to the moment the agent's code goes on. p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

import tachograph  # noqa: E402
from tachograph.agents import AgentSpec  # noqa: E402
from tachograph.models import ChatRequest, ModelRegistry  # noqa: E402
from tachograph.transports import CollectingTransport  # noqa: E402

TOOLS = tachograph.ToolRegistry()
TOOLS.register("kb.search", lambda a: {"hits": [f"kb/{a['q']}"]}, "none")
TOOLS.register("crm.lookup", lambda a: {"tier": "gold", "id": a["id"]}, "read")
STEPS = 8  # what bench_agent does per run besides start and finish
MODELS = ModelRegistry()


def bench_agent(ctx: Any, input: dict[str, Any]) -> Mapping[str, Any]:
    """Eight steps: four tool calls, three model calls, one policy check."""
    c = ctx.tool("crm.lookup", {"id": input["id"]})
    k = ctx.tool("kb.search", {"q": input["q"]})
    a = ctx.llm(f"Classify. {c['tier']} {k['hits']}\nCHOOSE: refund | billing | other").content
    ctx.tool("kb.search", {"q": a})
    b = ctx.llm(f"draft a reply about {a}").content
    ctx.policy("bench.policy", "reply", "allow", "no write")
    ctx.tool("crm.lookup", {"id": input["id"], "note": a})
    ctx.llm(f"summarise {b[:20]}")
    return {"category": a}


AGENT = AgentSpec("bench.runtime:bench_agent", bench_agent, TOOLS, {}, "bench-runtime",
                  {"id": "bench-agent", "version": "1"})


class _Reply:
    def __init__(self, content: str) -> None:
        self.content = content


class BareContext:
    """The baseline: the same tools and model, nothing recorded, checked or sent."""

    def tool(self, name: str, args: Mapping[str, Any]) -> Any:
        return TOOLS.get(name).fn(args)

    def llm(self, prompt: str) -> _Reply:
        r = MODELS.get("sim-small-v1").complete(ChatRequest("sim-small-v1", ({"role": "user", "content": prompt},)))
        return _Reply(r.content)

    def policy(self, policy: str, action: str, decision: str, reason: str) -> str:
        return decision


def inputs(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "q": f"query {i % 17}"} for i in range(n)]


def per_step_us(seconds: float, runs: int) -> float:
    return seconds / (runs * STEPS) * 1e6


def time_bare(runs: int) -> float:
    t0 = time.perf_counter()
    for inp in inputs(runs):
        bench_agent(BareContext(), inp)
    return time.perf_counter() - t0


def time_runtime(rt: tachograph.Runtime, runs: int) -> float:
    t0 = time.perf_counter()
    for inp in inputs(runs):
        result = rt.run(AGENT, inp)
        assert result.outcome == "succeeded", result.error
    return time.perf_counter() - t0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tacho(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout


class Server:
    """A ``tacho serve`` subprocess with a publisher and an approver key."""

    def __init__(self, data_dir: Path) -> None:
        self.env = {**os.environ, "TACHO_DATA_DIR": str(data_dir), "TACHO_APPROVAL_DECISIONS": "person"}
        _tacho(self.env, "keys")
        self.keys = {}
        for role in ("publisher", "approver"):
            out = json.loads(_tacho(self.env, "apikey", "create", "--workspace", "bench", "--role", role,
                                    "--label", f"bench {role}", "--json"))
            self.keys[role] = out["secret"]
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port),
                                      "--log-level", "warning"], env=self.env, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("tacho serve did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def approval_round_trips(server: Server, n: int) -> list[float]:
    """Seconds from a decision's POST being sent to the waiting agent's code going on."""
    resumed: list[float] = []
    waiting = threading.Event()
    approval_ids: list[str] = []

    def agent(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
        ok = ctx.request_approval("bench approval", "low", timeout=60)
        resumed.append(time.perf_counter())
        return {"approved": ok}

    spec = AgentSpec("bench.runtime:approval_agent", agent, TOOLS, {}, "bench-approvals",
                     {"id": "bench-agent", "version": "1"})
    rt = tachograph.connect(server.url, api_key=server.keys["publisher"], workspace="bench")
    decider = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.keys['approver']}"})
    out: list[float] = []
    try:
        for i in range(n):
            run_id = f"approval-bench-{i}"
            approval_ids.clear()
            waiting.clear()
            t = threading.Thread(target=rt.run, args=(spec, {}), kwargs={"run_id": run_id})
            t.start()
            aid = f"{run_id}/approval-1"
            deadline = time.monotonic() + 30
            while decider.get(f"/v1/approvals/{quote(aid, safe='')}").status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"approval {aid} never appeared")
                time.sleep(0.01)
            time.sleep(0.05)  # the agent is in its long poll
            decided = time.perf_counter()  # the person clicks: the decision request leaves
            r = decider.post(f"/v1/approvals/{quote(aid, safe='')}/decision", json={"decision": "approved"})
            if r.status_code != 200:
                raise SystemExit(f"decision failed: {r.status_code} {r.text}")
            t.join(30)
            out.append(resumed[-1] - decided)
    finally:
        rt.close()
        decider.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--approvals", type=int, default=40)
    p.add_argument("--transports", default="memory,embedded,http,kafka")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    wanted = args.transports.split(",")
    figures: dict[str, Any] = {"runs": args.runs, "steps_per_run": STEPS}
    time_bare(20)  # warm up
    bare = min(time_bare(args.runs) for _ in range(3))
    figures["bare_us_per_step"] = round(per_step_us(bare, args.runs), 2)
    results: dict[str, Any] = {}

    def record(name: str, make: Callable[[], tachograph.Runtime]) -> None:
        rt = make()
        try:
            time_runtime(rt, 5)  # warm up (connections, first imports)
            took = min(time_runtime(rt, args.runs) for _ in range(2))
        finally:
            rt.close()
        us = per_step_us(took, args.runs)
        results[name] = {"us_per_step": round(us, 1),
                         "overhead_us_per_step": round(us - figures["bare_us_per_step"], 1),
                         "ratio_to_bare": round(took / bare, 2)}
        if not args.json:
            print(f"{name:9s} {us:9.1f} µs/step  overhead {us - figures['bare_us_per_step']:8.1f} µs/step  "
                  f"({took / bare:.1f}× bare)", flush=True)

    if not args.json:
        print(f"bare      {figures['bare_us_per_step']:9.1f} µs/step (no recording)")
    with tempfile.TemporaryDirectory() as tmp:
        if "memory" in wanted:
            record("memory", lambda: tachograph.Runtime(workspace="bench", transport=CollectingTransport()))
        if "embedded" in wanted:
            record("embedded", lambda: tachograph.connect(f"embedded:{tmp}/embedded", workspace="bench"))
        server = Server(Path(tmp) / "served") if ("http" in wanted or args.approvals) else None
        try:
            if server is not None and "http" in wanted:
                record("http", lambda: tachograph.connect(server.url, api_key=server.keys["publisher"],
                                                          workspace="bench"))
            if "kafka" in wanted:
                from ingest.devbroker import DevBroker, ensure_topic

                with DevBroker(log_path=Path(tmp) / "tansu.log").start() as broker:
                    ensure_topic(broker.bootstrap, "agent-events")
                    record("kafka", lambda: tachograph.connect(f"kafka://{broker.bootstrap}/agent-events",
                                                               workspace="bench"))
            if server is not None and args.approvals:
                trips = sorted(approval_round_trips(server, args.approvals))
                ms = [t * 1000 for t in trips]
                results["approval_round_trip_ms"] = {
                    "n": len(ms), "p50": round(statistics.median(ms), 1),
                    "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1), "max": round(ms[-1], 1)}
                if not args.json:
                    r = results["approval_round_trip_ms"]
                    print(f"approval round trip (decision → agent resumed): p50 {r['p50']} ms, "
                          f"p99 {r['p99']} ms, max {r['max']} ms over {r['n']}")
        finally:
            if server is not None:
                server.stop()
    figures.update(results)
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
