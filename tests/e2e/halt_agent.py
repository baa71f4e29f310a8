"""An agent service in its own process: records one run over HTTP and obeys halts read over HTTP.

``python halt_agent.py URL KEY WORKFLOW AGENT_ID RUN_ID STEPS STEP_S``. Prints one JSON line per
finished step, then one JSON line with how the run ended and how often it asked for the halts.
It shares nothing with the platform but HTTP (run it from its own directory).
"""

from __future__ import annotations

import json
import sys
import time

from ingest.errors import RunHaltedError
from tachograph.halts import HttpHalts
from ingest.http_transport import HttpTransport
from ingest.sdk import Publisher


def main(url: str, key: str, workflow: str, agent_id: str, run_id: str, steps: int, step_s: float) -> None:
    halts = HttpHalts(url, key)
    transport = HttpTransport(url, key)
    publisher = Publisher(transport, workspace="acme", agent_id=agent_id, agent_version="1.0.0", halts=halts)
    out: dict[str, object] = {"run_id": run_id}

    def work(n: int) -> dict[str, int]:
        time.sleep(step_s)
        return {"n": n}

    try:
        with publisher.run(workflow, run_id=run_id) as run:
            for n in range(steps):
                run.tool_call("ledger.write", {"n": n}, fn=work, side_effect="write")
                print(json.dumps({"step": n, "t": time.time()}), flush=True)
        out["outcome"] = "succeeded"
    except RunHaltedError as e:
        out.update(outcome="cancelled", halted_at=time.time(), halt=e.halt.to_json())
    out.update(requests=halts.requests, not_modified=halts.not_modified)
    transport.close()
    halts.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], a[3], a[4], int(a[5]), float(a[6]))
