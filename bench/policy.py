"""Benchmark: what asking Open Policy Agent adds to a tool call, and what-if policy replay speed.

    .venv/bin/python bench/policy.py [--calls 2000] [--runs 300] [--json]

Needs the ``opa`` binary: ``TACHO_OPA_BIN``, else ``.cache/opa/bin/opa`` (``make test`` builds it),
else ``opa`` on PATH. The policy is tests/policies/refunds.rego, served as a bundle.

Per tool call (baseline in the same run): the same agent function through the runtime without a
policy engine, then with OPA asked before every call (``POST /v1/data/tachograph/decision`` over
loopback HTTP, decision recorded as ``policy.evaluated``). Reported: p50 and p99 of each call's
time in both, and the difference (what the policy adds). Then a what-if policy replay of the
recorded runs against a stricter revision: evaluations per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from domain.ledger import Ledger, LedgerConfig  # noqa: E402
from domain.note import NoteSigner  # noqa: E402
from domain.stores.sqlite import SQLiteStore  # noqa: E402
from replay.history import load_runs  # noqa: E402
from replay.opa_sidecar import OpaSidecar  # noqa: E402
from replay.policy_replay import PolicyGate, what_if_policy  # noqa: E402
from tachograph.agents import AgentSpec  # noqa: E402
from tachograph.policy import OpaClient  # noqa: E402
from tachograph.runtime import Runtime  # noqa: E402
from tachograph.tools import ToolRegistry  # noqa: E402
from tachograph.transports import CollectingTransport  # noqa: E402

POLICY = ROOT / "tests" / "policies" / "refunds.rego"
TOOLS = ToolRegistry()
TOOLS.register("refund", lambda a: {"refunded": a["amount"]}, "write")
TIMES: list[float] = []


def agent(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    """``input["calls"]`` refunds of up to 100 (all allowed), each timed."""
    for i in range(input["calls"]):
        t0 = time.perf_counter()
        ctx.tool("refund", {"order": f"o-{i}", "amount": 10 + (input.get("offset", 0) + i) % 90})
        TIMES.append(time.perf_counter() - t0)
    return {}


SPEC = AgentSpec("bench.policy:agent", agent, TOOLS, {}, "bench-policy", {"id": "bench", "version": "1"})


def opa_binary() -> str:
    for candidate in (os.environ.get("TACHO_OPA_BIN"), str(ROOT / ".cache" / "opa" / "bin" / "opa"),
                      shutil.which("opa")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("no opa binary: set TACHO_OPA_BIN or run `python -m tests.harness.opa --build`")


def bundle(tmp: Path, name: str, approval_above: int, deny_above: int) -> Path:
    d = tmp / name
    d.mkdir()
    rego = POLICY.read_text().replace("approval_above := 100", f"approval_above := {approval_above}")
    (d / "refunds.rego").write_text(rego.replace("deny_above := 1000", f"deny_above := {deny_above}"))
    (d / ".manifest").write_text(json.dumps({"revision": name, "roots": ["tachograph"]}))
    return d


def timed_calls(rt: Runtime, calls: int) -> list[float]:
    TIMES.clear()
    per_run = 50
    for _ in range(calls // per_run):
        result = rt.run(SPEC, {"calls": per_run})
        assert result.outcome == "succeeded", result.error
    return list(TIMES)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("TACHO_OPA_BIN", opa_binary())
    out: dict[str, Any] = {"calls": args.calls}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with OpaSidecar(bundle(tmp, "refunds-r1", 100, 1000)) as opa:
            bare = Runtime(workspace="bench", transport=CollectingTransport())
            asked = Runtime(workspace="bench", transport=CollectingTransport(), policy=OpaClient(opa.url))
            timed_calls(bare, 200)
            timed_calls(asked, 200)  # warm up: connections, OPA's first evaluations
            without = timed_calls(bare, args.calls)
            with_policy = timed_calls(asked, args.calls)
            for name, values in (("without_policy_us", without), ("with_opa_us", with_policy)):
                out[name] = {"p50": round(pct(values, 0.5), 1), "p99": round(pct(values, 0.99), 1)}
            out["added_us"] = {q: round(out["with_opa_us"][q] - out["without_policy_us"][q], 1)
                               for q in ("p50", "p99")}
            out["mean_added_us"] = round((statistics.mean(with_policy) - statistics.mean(without)) * 1e6, 1)

            ledger = Ledger(SQLiteStore(tmp / "ledger.db"), NoteSigner.from_seed("bench.example/log", b"\1" * 32),
                            LedgerConfig(origin="bench.example/log"), clock=time.time)
            from ingest.embedded import embedded_runtime

            with embedded_runtime(ledger, "bench", policy=OpaClient(opa.url)) as rt:
                for n in range(args.runs):
                    rt.run(SPEC, {"calls": 10, "offset": 10 * n})
        runs = load_runs(ledger.store, workflow="bench-policy")
        with OpaSidecar(bundle(tmp, "refunds-r2", 50, 500)) as strict, OpaClient(strict.url) as client:
            t0 = time.perf_counter()
            report = what_if_policy(runs, client.decide, replay_id="bench", created="-",
                                    candidate="refunds-r2", gate=PolicyGate())
            took = time.perf_counter() - t0
        evaluated = report["summary"]["evaluated"]
        out["what_if"] = {"runs": len(runs), "evaluations": evaluated,
                          "evaluations_per_s": round(evaluated / took, 1),
                          "new_approvals": report["summary"]["new_approvals"]}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"per tool call, p50 / p99: without a policy {out['without_policy_us']['p50']} / "
          f"{out['without_policy_us']['p99']} µs; asking OPA {out['with_opa_us']['p50']} / "
          f"{out['with_opa_us']['p99']} µs; added {out['added_us']['p50']} / {out['added_us']['p99']} µs")
    w = out["what_if"]
    print(f"what-if policy replay: {w['evaluations']} evaluations of {w['runs']} runs at "
          f"{w['evaluations_per_s']}/s ({w['new_approvals']} newly needing approval)")


if __name__ == "__main__":
    main()
