"""`tacho demo` (what `make demo` runs) end to end: the main job on embedded defaults, twice.

The example agents run through the agent runtime over the embedded Kafka broker, `tacho ingest`'s
worker appends their events, and a person decides their approvals through the HTTP API. A real
OPA (the harness's build; the demo finds it in .cache/opa) decides their actions under the
demo's refund policy, published as a revision in the ledger and downloaded from the demo's API;
a stricter revision is published, not activated, and tried on the runs."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from api.cli_policy import read_policy_files
from api.keys_store import KeyStore
from domain.origins import PRODUCTION, REPLAY, origin_of_entry
from domain.ports import LedgerStore
from domain.stores.sqlite import SQLiteStore
from replay.recomputed import comparable
from tachograph.contract.canonical import loads
from tests.cli_support import tacho

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"ticket-triage": "examples.triage:triage", "invoice-matching": "examples.invoices:match_invoice"}
POLICIES = ROOT / "examples" / "policies"
RULE = "tachograph/decision"
AGENTS = {"ticket-triage": "triage-agent", "invoice-matching": "ap-agent"}


def demo(data_dir: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TACHO_KAFKA_BOOTSTRAP", "TACHO_OPA_BIN")}
    env.update(extra_env)
    env["TACHO_DATA_DIR"] = str(data_dir)
    env["TACHO_APPROVAL_DECISIONS"] = "person"  # every approval.decided must repeat a person's decision
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "demo", *args], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )


def secrets(keys_file: Path) -> list[str]:
    rows = [line.split("\t") for line in keys_file.read_text().splitlines() if not line.startswith("#")]
    return [row[-1] for row in rows if len(row) >= 3]


@contextmanager
def ledger_store(data_dir: Path) -> Iterator[LedgerStore]:
    store = SQLiteStore(data_dir / "ledger.db")
    try:
        yield store
    finally:
        store.close()


def entries(store: LedgerStore, run_id: str) -> list[dict[str, Any]]:
    """A demo run's ledger entries (each with its ``event`` and ``source``)."""
    return [loads(r.data) for r in store.run_entries("demo", run_id)]


def assert_agents_ran_through_kafka(data_dir: Path, agents: dict[str, Any]) -> None:
    """Every example run is in the ledger whole, from Kafka, made by the runtime; every approval
    was decided by a person through the API and repeated by the agent, whose run then completed."""
    with ledger_store(data_dir) as store:
        for run_id in agents["runs"]["run_ids"]:
            rows = entries(store, run_id)
            started = rows[0]["event"]
            workflow = started["data"]["workflow"]
            assert {r["source"]["kind"] for r in rows} == {"kafka"}, run_id
            assert started["data"]["entry_point"] == EXAMPLES[workflow]
            assert {r["event"]["agent"]["id"] for r in rows} == {AGENTS[workflow]}
            assert rows[-1]["event"]["type"] in ("run.completed", "feedback.recorded")
        decisions = {loads(r.data)["record"]["data"]["approval_id"]: loads(r.data)["record"]
                     for r in store.records("demo", limit=10**6, record_type="approval.decision")}
        assert agents["approvals"]
        for decided in agents["approvals"]:
            record = decisions[decided["approval_id"]]  # the person's decision, recorded by the platform
            assert record["actor"]["role"] == "approver" and record["actor"]["name"] == "Pat Approver"
            assert decided["decided_by"] == f"Pat Approver (apikey:{record['actor']['key_id']})"
            events = [r["event"] for r in entries(store, decided["run_id"])]
            repeated = [e["data"] for e in events if e["type"] == "approval.decided"]
            assert repeated == [{"approval_id": decided["approval_id"], "decision": decided["decision"],
                                 "by": decided["decided_by"], "reason": record["data"].get("reason")}]
            assert "run.completed" in [e["type"] for e in events]


def assert_only_the_runtime_wrote_example_runs(data_dir: Path) -> None:
    """No run under the example workflows was written by anything but the runtime (which names
    the agent's entry point in run.started), replays of such runs aside."""
    with ledger_store(data_dir) as store:
        for row in store.entries():
            if row.event_type != "run.started":
                continue
            data = loads(row.data)["event"]["data"]
            if data["workflow"] in EXAMPLES and "replay_of" not in data:
                assert data.get("entry_point") == EXAMPLES[data["workflow"]], data


def policy_records(data_dir: Path) -> list[dict[str, Any]]:
    """The demo workspace's policy.published / policy.activated records, in ledger order."""
    with ledger_store(data_dir) as store:
        rows = store.records_of_types("demo", ("policy.published", "policy.activated"), -1, 1000)
        return [loads(r.data)["record"] for r in rows]


def assert_opa_decided_the_agents_actions(data_dir: Path, out: dict[str, Any]) -> None:
    """The demo's refund policy was published and put in force as a ledger revision; OPA (loading
    it from the demo's API) judged every tool call and change of the agents' runs, each decision
    recorded with that revision and OPA's decision id; the demo's counts are the ledger's; refunds
    hit both thresholds (the 240 USD refund waited for a person, the 1250 USD one was denied)."""
    agents, policy = out["agents"], out["agents"]["policy"]
    assert policy["ran"] is True and re.fullmatch(r"[1-9][0-9]*-[0-9a-f]{12}", policy["revision"])
    assert policy["opa_url"].startswith("http://127.0.0.1:")
    rev = policy["revision"]
    records = policy_records(data_dir)
    published = {r["data"]["revision"]: r["data"] for r in records if r["type"] == "policy.published"}
    assert published[rev]["files"] == read_policy_files(POLICIES / "refunds")
    assert published[rev]["checked_with"].startswith("opa ")  # `opa check` accepted it first
    assert [r["data"]["revision"] for r in records if r["type"] == "policy.activated"][-1] == rev

    counted: dict[str, dict[str, int]] = {}
    actions = 0
    with ledger_store(data_dir) as store:
        for run_id in agents["runs"]["run_ids"]:
            events = [e["event"] for e in entries(store, run_id)]
            actions += sum(1 for e in events if e["type"] in ("tool.called", "change.applied"))
            for e in events:
                if e["type"] == "policy.evaluated" and e["data"]["policy"] == RULE:
                    assert e["data"]["revision"] == rev and e["data"]["decision_id"], e
                    row = counted.setdefault(e["data"]["revision"], {"allow": 0, "require_approval": 0, "deny": 0})
                    row[e["data"]["decision"]] += 1
        # the refunds every third ticket asks for: 240 USD waited for a person, 1250 USD was denied
        stamp = agents["runs"]["run_ids"][0].split("-")[-2]
        for i, amount, decision in ((3, "240", "require_approval"), (6, "1250", "deny")):
            events = [e["event"] for e in entries(store, f"ticket-triage-{stamp}-{i:03d}")]
            judged = [e["data"] for e in events if e["type"] == "policy.evaluated"
                      and e["data"]["action"] == "refund.issue"]  # the tool call, then (if it ran) the change
            expected = [(decision, rev)] if decision == "deny" else [(decision, rev), ("allow", rev)]
            assert [(d["decision"], d["revision"]) for d in judged] == expected
            assert amount in judged[0]["reason"]
            done = events[-1]["data"] if events[-1]["type"] == "run.completed" else events[-2]["data"]
            if decision == "deny":
                assert done["outcome"] == "escalated" and done["result"]["refund"] == "denied"
                assert "refund.issue" not in [e["data"].get("tool") for e in events if e["type"] == "tool.called"]
            else:
                assert "approval.requested" in [e["type"] for e in events]
    assert counted == policy["decisions"]
    n = counted[rev]
    assert n["deny"] >= 1 and n["require_approval"] >= 1 and n["allow"] > 0
    # every action was asked about; denied ones never ran
    assert n["allow"] + n["require_approval"] == actions


def assert_a_stricter_revision_was_tried_and_not_activated(data_dir: Path, out: dict[str, Any]) -> None:
    """The stricter revision is published, not in force; its what-if over the agents' runs newly
    denies the 760 USD refund and newly sends the 80 USD one to a person, fails its gate, and is
    stored like any replay."""
    active, what_if = out["agents"]["policy"]["revision"], out["policy_what_if"]
    assert what_if["ran"] is True and what_if["active"] == active and what_if["revision"] != active
    published = {r["data"]["revision"]: r["data"] for r in policy_records(data_dir)
                 if r["type"] == "policy.published"}
    assert published[what_if["revision"]]["files"] == read_policy_files(POLICIES / "refunds-stricter")
    listed = json.loads(tacho(data_dir, "policy", "list", "--workspace", "demo", "--json").stdout)
    assert listed["active"] == active

    s = what_if["summary"]
    assert s["runs"] == out["agents"]["runs"]["runs"] and s["candidate_revisions"] == [what_if["revision"]]
    assert s["new_denials"] >= 1 and s["new_approvals"] >= 1 and s["new_allows"] == 0
    assert s["evaluated"] == s["new_denials"] + s["new_approvals"] + s["new_allows"] + s["unchanged"]
    assert what_if["gate"]["passed"] is False
    assert what_if["gate"]["failures"][0].startswith(f"new denials: {s['new_denials']} of {s['evaluated']}")
    report = json.loads(tacho(data_dir, "replay", "show", what_if["replay_id"], "--json").stdout)
    assert report["summary"] == s and report["mode"] == "policy"
    changed = {(c["arguments"]["amount"], c["before"], c["after"]) for r in report["runs"] for c in r["changed"]}
    assert {("760", "require_approval", "deny"), ("80", "allow", "require_approval")} <= changed


def runs_by_origin_and_workflow(data_dir: Path) -> dict[tuple[str, str], int]:
    """Runs in the ledger by (origin, workflow), each origin from ``domain.origins``."""
    counts: dict[tuple[str, str], int] = {}
    with ledger_store(data_dir) as store:
        for row in store.entries():
            if row.event_type == "run.started":
                entry = loads(row.data)
                key = (origin_of_entry(entry).origin, entry["event"]["data"]["workflow"])
                counts[key] = counts.get(key, 0) + 1
    return counts


def assert_analytics_count_production_runs_only(data_dir: Path, out: dict[str, Any]) -> None:
    """The analytics stage's figures leave out the replays the demo made (and any other run the
    platform wrote); asked for, the replays are there."""
    analytics, replays = out["analytics"], out["replays"]
    in_ledger = runs_by_origin_and_workflow(data_dir)
    production = {wf: n for (origin, wf), n in in_ledger.items() if origin == PRODUCTION}
    replayed = sum(r["summary"]["runs"] for r in replays)
    assert replayed > 0 and analytics["runs_by_origin"][REPLAY] == replayed
    assert analytics["runs_by_origin"][PRODUCTION] == sum(production.values())
    for name, report in analytics["reports"].items():
        assert (report["origin"], report["replay_id"]) == (PRODUCTION, None), name
    outcomes = {row["workflow"]: row["runs"] for row in analytics["reports"]["outcomes"]["rows"]}
    assert outcomes == production
    for workflow in EXAMPLES:  # every example run was replayed twice: all of them left out
        assert in_ledger[(REPLAY, workflow)] == 2 * out["agents"]["runs"]["by_workflow"][workflow]["runs"]
        assert outcomes[workflow] < production[workflow] + in_ledger[(REPLAY, workflow)]
    cost = analytics["reports"]["cost-per-outcome"]["rows"]
    assert sum(r["runs"] for r in cost) == sum(production.values())

    # the same from the CLI, and the replays' own figures when asked for
    def report(*args: str) -> dict[str, Any]:
        return json.loads(tacho(data_dir, "report", *args, "--json").stdout)  # type: ignore[no-any-return]

    assert report("outcomes")["rows"] == analytics["reports"]["outcomes"]["rows"]
    large = next(r for r in replays if r["candidate_model"] == "sim-large-v2")
    mine = report("outcomes", "--replay-id", large["replay_id"])
    assert (mine["origin"], mine["replay_id"]) == (REPLAY, large["replay_id"])
    assert [(r["workflow"], r["runs"]) for r in mine["rows"]] == [(large["workflow"], large["summary"]["runs"])]
    every = report("outcomes", "--origin", "replay", "--by", "workflow")
    assert sum(r["runs"] for r in every["rows"]) == replayed
    for stored in replays:  # each stored replay's figures, recomputed from its runs in the ledger
        assert report("replay", stored["replay_id"])["summary"] == comparable(stored["summary"])
    bad = tacho(data_dir, "report", "outcomes", "--origin", "replays", check=False)
    assert bad.returncode == 2 and "origin must be one of production, replay" in bad.stderr


def test_the_demo_runs_the_example_agents_over_kafka_and_reports_it_as_json_without_secrets(
        tmp_path: Path, opa_bin: Path) -> None:
    t0 = time.monotonic()
    first = demo(tmp_path, "--runs", "30", "--json")
    took = time.monotonic() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    out: dict[str, Any] = json.loads(first.stdout)  # stdout is the JSON alone; the story is on stderr
    assert "verify the whole ledger" in first.stderr and took < 120

    agents = out["agents"]
    assert agents["via"] == "kafka" and agents["dev_broker"] is True and agents["workspace"] == "demo"
    runs = agents["runs"]
    assert runs["runs"] == 30 and len(set(runs["run_ids"])) == 30
    assert {w: r["runs"] for w, r in runs["by_workflow"].items()} == {"ticket-triage": 15, "invoice-matching": 15}
    assert agents["ingested"]["accepted"] == runs["events"] > 0
    assert agents["ingested"]["quarantined"] == 0 and agents["ingested"]["duplicates"] == 0
    asked = sum(r["approvals"].get("requested", 0) for r in runs["by_workflow"].values())
    assert asked == len(agents["approvals"]) > 0

    # one run waited for a person, shown with its console link; the decision came through the API
    spot = agents["spotlight"]
    assert spot == {**agents["approvals"][0], "outcome": spot["outcome"]}
    assert spot["console_url"] == f"{agents['api_url']}/console/runs/{spot['run_id']}"
    assert f"run {spot['run_id']} waits for a person" in first.stderr and spot["console_url"] in first.stderr
    assert f"POST /v1/approvals/{spot['approval_id'].replace('/', '%2F')}/decision" in first.stderr
    assert spot["outcome"] == ("succeeded" if spot["decision"] == "approved" else "escalated")
    assert f"the waiting agent went on: run {spot['run_id']} {spot['outcome']}" in first.stderr
    assert_agents_ran_through_kafka(tmp_path, agents)
    assert_only_the_runtime_wrote_example_runs(tmp_path)
    assert_opa_decided_the_agents_actions(tmp_path, out)
    assert "what OPA decided about the agents' actions" in first.stderr
    assert_a_stricter_revision_was_tried_and_not_activated(tmp_path, out)
    assert agents["policy"]["records"] == 2 and out["policy_what_if"]["records"] == 1  # published (+ activated)

    verified = out["verify"]["result"]
    assert verified["ok"] is True
    assert verified["entries"] == runs["events"] + len(agents["approvals"]) + agents["policy"]["records"]
    assert out["verify"]["checkpoint"].startswith("tachograph")
    assert out["evidence"]["result"]["ok"] is True and Path(out["evidence"]["file"]).is_file()
    assert out["evidence"]["result"]["run_id"] in runs["run_ids"]

    assert out["replays"] and all(r["gate"]["passed"] for r in out["replays"])
    assert {r["candidate_model"] for r in out["replays"]} == {None, "sim-large-v2"}
    assert set(out["analytics"]["reports"]) >= {"cost-per-outcome", "violations", "budgets", "approvals"}
    assert out["analytics"]["projection"]["lag"] == 0
    assert out["ledger"]["entries"] == out["analytics"]["projection"]["position"] > verified["entries"]
    assert_analytics_count_production_runs_only(tmp_path, out)

    keys_file = Path(out["console"]["keys_file"])
    assert out["console"]["created_keys"] is True
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert secrets(keys_file) and not any(s in first.stdout for s in secrets(keys_file))
    store = KeyStore(tmp_path / "keys" / "apikeys.db", time.time)
    stage_keys = [k for k in store.list("demo") if k.label == "tacho demo agents" or
                  (k.label == "Pat Approver" and k.expires is not None)]
    assert len(stage_keys) == 2 and all(k.revoked for k in stage_keys)  # the stage's keys end with it

    # a second demo in the same data directory records new runs of the example agents (onto a
    # fresh dev broker): the ledger grows by them and still verifies
    second = demo(tmp_path, "--runs", "30", "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    runs2 = again["agents"]["runs"]
    assert not set(runs2["run_ids"]) & set(runs["run_ids"])
    assert again["agents"]["ingested"]["accepted"] == runs2["events"]
    assert again["agents"]["ingested"]["duplicates"] == 0 == again["agents"]["ingested"]["quarantined"]
    assert again["verify"]["result"]["ok"] is True
    # the same two revisions serve again: nothing new is published or activated
    assert again["agents"]["policy"]["revision"] == agents["policy"]["revision"]
    assert again["agents"]["policy"]["records"] == 0 == again["policy_what_if"]["records"]
    assert again["policy_what_if"]["revision"] == out["policy_what_if"]["revision"]
    assert_opa_decided_the_agents_actions(tmp_path, again)
    assert again["verify"]["result"]["entries"] == (out["ledger"]["entries"] + runs2["events"]
                                                    + len(again["agents"]["approvals"]))
    assert again["ledger"]["entries"] > out["ledger"]["entries"]
    assert again["console"]["created_keys"] is False
    assert_agents_ran_through_kafka(tmp_path, again["agents"])
    assert_only_the_runtime_wrote_example_runs(tmp_path)


def test_the_demo_runs_embedded_without_a_broker(tmp_path: Path, opa_bin: Path) -> None:
    res = demo(tmp_path, "--runs", "6", "--via", "embedded", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    agents = out["agents"]
    assert agents["via"] == "embedded" and "ingested" not in agents and agents["runs"]["runs"] == 6
    with ledger_store(tmp_path) as store:
        for run_id in agents["runs"]["run_ids"]:
            assert {r["source"]["kind"] for r in entries(store, run_id)} == {"agent"}
    assert out["verify"]["result"]["ok"] is True
    assert_only_the_runtime_wrote_example_runs(tmp_path)
    assert agents["policy"]["ran"] is True and out["policy_what_if"]["ran"] is True
    assert sum(agents["policy"]["decisions"][agents["policy"]["revision"]].values()) > 0


def test_without_a_usable_opa_the_demo_says_so_and_runs_without_a_policy_engine(tmp_path: Path) -> None:
    res = demo(tmp_path, "--runs", "4", "--via", "embedded", "--json", TACHO_OPA_BIN=str(tmp_path / "no-opa"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    reason = f"TACHO_OPA_BIN={str(tmp_path / 'no-opa')!r} is not an executable file"
    assert out["agents"]["policy"] == {"ran": False, "reason": reason}
    assert out["policy_what_if"] == {"ran": False, "reason": reason}
    assert "no policy engine:" in res.stderr and "the policy section is left out" in res.stderr
    assert policy_records(tmp_path) == []
    with ledger_store(tmp_path) as store:
        for run_id in out["agents"]["runs"]["run_ids"]:
            assert RULE not in [e["event"]["data"].get("policy") for e in entries(store, run_id)]
    assert out["verify"]["result"]["ok"] is True


def test_the_demo_names_a_bad_via(tmp_path: Path) -> None:
    res = demo(tmp_path, "--via", "carrier-pigeon")
    assert res.returncode != 0 and "--via must be kafka or embedded" in res.stderr
