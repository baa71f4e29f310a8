"""What ``run.started`` records so replay can find the code again: the entry point
(``module:function``) and the agent's version, and nothing when the code has no importable name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import tachograph
from tachograph.transports import CollectingTransport

ROOT = Path(__file__).resolve().parents[2]


def _started(agent: Any, **kw: Any) -> dict[str, Any]:
    rt = tachograph.Runtime(workspace="acme", transport=CollectingTransport())
    return rt.run(agent, {}, workflow="w", **kw).events[0]


def test_a_module_function_is_recorded_as_module_colon_function_with_its_version() -> None:
    from examples import triage

    first = _started(triage.triage, budget=tachograph.Budget(max_model_calls=0))
    assert first["data"]["entry_point"] == "examples.triage:triage"
    assert first["agent"] == {"id": "triage-agent", "version": "3.0.0"}
    assert _started("examples.invoices:match_invoice")["data"]["entry_point"] == "examples.invoices:match_invoice"


def test_code_without_an_importable_name_records_no_entry_point_and_still_runs() -> None:
    def outer() -> Any:
        def inner(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
            return {}
        return inner

    for agent in (lambda ctx, input: {}, outer()):
        first = _started(agent)
        assert "entry_point" not in first["data"]
        assert first["agent"]["version"] == "unversioned"


def test_an_agent_run_with_python_dash_m_records_the_module_name_replay_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "acme_agents"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "refunds.py").write_text(
        "import json, tachograph\n"
        "from tachograph.transports import CollectingTransport\n"
        "WORKFLOW = 'refunds'\nAGENT = {'id': 'refund-agent', 'version': '1.2.3'}\n"
        "def refund(ctx, input):\n    return {'ok': True}\n"
        "if __name__ == '__main__':\n"
        "    rt = tachograph.Runtime(workspace='acme', transport=CollectingTransport())\n"
        "    print(json.dumps(rt.run(refund, {}).events[0]))\n")
    out = subprocess.run([sys.executable, "-m", "acme_agents.refunds"], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    first = json.loads(out.stdout)
    assert first["data"]["entry_point"] == "acme_agents.refunds:refund"
    assert first["data"]["workflow"] == "refunds"
    assert first["agent"] == {"id": "refund-agent", "version": "1.2.3"}
