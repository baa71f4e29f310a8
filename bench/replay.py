"""Benchmark: fidelity-replay N recorded runs of ~10 steps, recording the replays into the ledger.

    .venv/bin/python bench/replay.py [--runs 10000] [--workers 2]

The runs are first recorded live through the agent runtime into the ledger in this process
(``ingest.embedded.embedded_runtime``: every step checks the kill switches, each run is appended
in one transaction when it ends). Baseline measured in the same run: reading the same runs back
from the store (``load_runs``), the floor under any replay. Reports runs/s and the ratio
replay / baseline.
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
from replay.engine import ReplayConfig, run_replay
from replay.history import load_runs
from tachograph.agents import AgentSpec
from tachograph.builder import seq_event_id
from tachograph.context import Context
from tachograph.models import ModelRegistry
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
    n = args.runs
    print(f"cores: {os.cpu_count()}  runs: {n}  events per run: {size / n:.1f}  workers: {args.workers}")
    print(f"live record (runtime, sim model) {n / t_record:8.0f} runs/s  ({t_record:.2f} s)")
    print(f"baseline: read runs from store   {n / t_read:8.0f} runs/s  ({t_read:.2f} s)")
    print(f"fidelity replay + record         {n / t_replay:8.0f} runs/s  ({t_replay:.2f} s, includes the read)")
    print(f"ratio replay / baseline time     {t_replay / t_read:8.2f}x")
    print(f"target >= 300 runs/s: {'met' if n / t_replay >= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
