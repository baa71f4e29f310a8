"""Benchmark: fidelity-replay N recorded runs of ~10 steps, recording the replays into the ledger;
then a what-if replay of some of them against a real model over HTTP, and the same from the cache.

    .venv/bin/python bench/replay.py [--runs 10000] [--workers 2] [--real-runs 20] [--model-url URL]

The runs are first recorded live through the agent runtime into the ledger in this process
(``ingest.embedded.embedded_runtime``: every step checks the kill switches, each run is appended
in one transaction when it ends). Baseline measured in the same run: reading the same runs back
from the store (``load_runs``), the floor under any replay. Reports runs/s and the ratio
replay / baseline.

Real model (``--real-runs N``, 0 to skip): SmolLM2-135M-Instruct on llama-cpp-python's
OpenAI-compatible server, started by the test harness (``tests/harness/llm.py``; built once into
.cache) unless ``--model-url`` names a running server. The first ``N`` recorded runs are replayed
what-if against it (``max_tokens`` 8, temperature 0) through a new response cache: runs/s and
model calls/s; then the same replay again, answered from the cache: runs/s and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.ledger import Ledger, LedgerConfig
from domain.note import NoteSigner
from domain.stores.sqlite import SQLiteStore
from ingest.embedded import embedded_runtime
from replay.cache import ReplayAnswers, ResponseCache
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from tachograph.agents import AgentSpec
from tachograph.builder import seq_event_id
from tachograph.context import Context
from tachograph.models import FREE, HttpModelConfig, ModelRegistry
from tachograph.tools import ToolRegistry

TOOLS = ToolRegistry()
TOOLS.register("kb.search", lambda a: {"hits": [f"kb/{a['q']}"]}, "none")
TOOLS.register("crm.lookup", lambda a: {"tier": "gold", "id": a["id"]}, "read")


def bench_agent(ctx: Context, input: dict[str, Any]) -> Mapping[str, Any]:
    """Ten steps: four tool calls, three model calls, one policy check, start and finish."""
    c = ctx.tool("crm.lookup", {"id": input["id"]})
    k = ctx.tool("kb.search", {"q": input["q"]})
    a = ctx.llm(f"{ctx.prompt('sys')} {c['tier']} {k['hits']}\nCHOOSE: refund | billing | other").content
    ctx.tool("kb.search", {"q": a})
    b = ctx.llm(f"draft a reply about {a}").content
    ctx.policy("bench.policy", "reply", "allow", "no write")
    ctx.tool("crm.lookup", {"id": input["id"], "note": a})
    ctx.llm(f"summarise {b[:20]}")
    return {"category": a}


AGENT = AgentSpec("bench:bench_agent", bench_agent, TOOLS, {"sys": "Classify."}, "bench",
                  {"id": "bench-agent", "version": "1"})


def main() -> None:
    """Record, read back (baseline), fidelity-replay with recording; print figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--real-runs", type=int, default=40, help="runs replayed against the real model (0: skip)")
    p.add_argument("--model-url", help="a running OpenAI-compatible server (default: start SmolLM2)")
    p.add_argument("--model-name", default="smollm2-135m-instruct", help="the model as --model-url serves it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore(Path(d) / "ledger.db")
        signer = NoteSigner.from_seed("bench.example/log", b"\1" * 32)
        ledger = Ledger(store, signer, LedgerConfig(origin="bench.example/log"), clock=time.time)
        t0 = time.perf_counter()
        with embedded_runtime(ledger, "bench", clock=time.time, event_ids=seq_event_id,
                              models=ModelRegistry(), model="sim-small-v1") as rt:
            for i in range(args.runs):
                rt.run(AGENT, {"id": i, "q": f"topic{i % 50}"}, run_id=f"run-{i:06d}")
        t_record = time.perf_counter() - t0
        size = store.size()

        t0 = time.perf_counter()
        runs = load_runs(store, workflow="bench")
        t_read = time.perf_counter() - t0

        t0 = time.perf_counter()
        runs = load_runs(store, workflow="bench")
        report = run_replay(runs, AGENT, ReplayConfig("bench-replay", "t", workers=args.workers),
                            ModelRegistry(), ledger=ledger)
        t_replay = time.perf_counter() - t0
        statuses = report["summary"]["statuses"]
        assert statuses == {"reproduced": args.runs}, statuses
        assert report["recorded"]["accepted"] == size, report["recorded"]
        real = real_model_replays(runs[: args.real_runs], ledger, Path(d), args) if args.real_runs else None
    n = args.runs
    print(f"cores: {os.cpu_count()}  runs: {n}  events per run: {size / n:.1f}  workers: {args.workers}")
    print(f"live record (runtime, sim model) {n / t_record:8.0f} runs/s  ({t_record:.2f} s)")
    print(f"baseline: read runs from store   {n / t_read:8.0f} runs/s  ({t_read:.2f} s)")
    print(f"fidelity replay + record         {n / t_replay:8.0f} runs/s  ({t_replay:.2f} s, includes the read)")
    print(f"ratio replay / baseline time     {t_replay / t_read:8.2f}x")
    print(f"target >= 300 runs/s: {'met' if n / t_replay >= 300 else 'NOT met'}")
    if real is not None:
        print_real(real)


def real_model_replays(runs: list[Any], ledger: Ledger, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """What-if replays of ``runs`` against a real model: cold (fresh answers), then from the cache."""
    server = None
    base_url, model = args.model_url, args.model_name
    if base_url is None:
        from tests.harness.llm import LlamaServer

        server = LlamaServer(workdir / "llm")
        server.start()
        base_url, model = server.base_url, server.model
    try:
        models = ModelRegistry({"real": HttpModelConfig(base_url, model, price=FREE,
                                                        params={"max_tokens": 8, "temperature": 0})},
                               sleep=time.sleep, clock=time.monotonic)
        cache = ResponseCache(workdir / "cache.db")
        out: dict[str, Any] = {"runs": len(runs), "model": model}
        for label in ("fresh", "cached"):
            answers = ReplayAnswers()
            config = ReplayConfig(f"bench-real-{label}", "t", candidate_model="real", workers=args.workers)
            t0 = time.perf_counter()
            report = run_replay(runs, AGENT, config, models, ledger=ledger, cache=cache, answers=answers)
            out[label] = {"seconds": time.perf_counter() - t0, "answers": answers.summary(),
                          "model_calls": report["summary"]["after"]["model_calls"]}
        cache.close()
        return out
    finally:
        if server is not None:
            server.close()


def print_real(real: dict[str, Any]) -> None:
    """The real model's figures: runs/s and model calls/s, fresh and from the cache."""
    n = real["runs"]
    for label in ("fresh", "cached"):
        r = real[label]
        a = r["answers"]
        print(f"what-if vs {real['model']} ({label:6s}) {n / r['seconds']:8.1f} runs/s  "
              f"{r['model_calls'] / r['seconds']:8.1f} model calls/s  ({r['seconds']:.2f} s; "
              f"{a['fresh']} fresh answers, {a['fresh'] / r['seconds']:.1f}/s; {a['cached']} from the cache)")
    print(f"speed-up from the cache           {real['fresh']['seconds'] / real['cached']['seconds']:8.1f}x")


if __name__ == "__main__":
    main()
