"""Ledger commands: import, verify, checkpoint, evidence, keys, quarantine, generate, schema."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from api.auditor_state import note_size, read_state, save_state
from api.bootstrap import build_ledger, load_signer, open_store, witness_pusher, write_secret
from api.output import JsonOpt, console, err_console, print_json
from api.settings import Settings
from api.witness_check import verify_witnesses
from domain import merkle
from domain.approvals import DECISIONS_FROM, required_from
from domain.errors import ConfigError, NotFoundError
from domain.evidence import build_evidence, verify_evidence
from domain.ledger import QUARANTINE_PREVIEW_BYTES, Ledger
from domain.note import NoteSigner
from domain.ports import LedgerStore, QuarantineRow
from domain.verify import Trusted, VerifyResult, verify_log
from domain.witness import parse_witness
from domain.workload import Workload
from ingest.jsonl import import_jsonl
from tachograph.contract.canonical import dumps
from tachograph.contract.events import json_schema


def progress_bar(total: int | None, what: str) -> Progress:
    """A rich progress bar on stderr."""
    return Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def cmd_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one event a line")],
    json_out: JsonOpt = False,
    batch_size: Annotated[int, typer.Option(help="events per transaction")] = 2000,
) -> None:
    """Append events from a JSONL file (accepted / duplicate / quarantined counts)."""
    settings = Settings()
    ledger = build_ledger(settings)
    total = _count_lines(file)
    with progress_bar(total, "importing") as bar:
        task = bar.add_task("import", total=total)
        totals = import_jsonl(ledger, file, batch_size, progress=lambda n: bar.advance(task, n))
    pushed = push_to_witnesses(settings, ledger)
    if json_out:
        print_json({**totals.to_json(), **({"witnesses": pushed} if pushed else {})})
        return
    c = console()
    c.print(
        f"accepted [green]{totals.accepted}[/], duplicates {totals.duplicates}, "
        f"quarantined [red]{totals.quarantined}[/], held {totals.held} "
        f"(ledger size {ledger.store.size()})"
    )
    for reason in totals.reasons[:10]:
        c.print(f"  [red]quarantined:[/] {reason}")
    if totals.quarantined:
        c.print("  see `tacho quarantine list`")


def push_to_witnesses(settings: Settings, ledger: Ledger) -> list[dict[str, object]]:
    """Push the newest checkpoint to ``TACHO_WITNESSES`` and wait (bounded) for their answers.

    Each outcome is also printed on stderr; a rollback or fork is an error, not a warning.
    """
    pusher = witness_pusher(settings, ledger)
    row = ledger.store.latest_checkpoint()
    if pusher is None or row is None:
        return []
    pusher.start()
    try:
        outcomes = pusher.wait_settled(row.size, settings.witness_wait_s)
    finally:
        pusher.stop()
    err = err_console()
    for o in outcomes:
        if o.status == "cosigned":
            err.print(f"witness {o.witness}: cosigned checkpoint {o.size}")
        else:
            style = "bold red" if o.status in ("rollback", "fork") else "yellow"
            err.print(f"[{style}]witness {o.witness}: {o.status.upper()}[/] {o.reason}", highlight=False)
    return [o.to_json() for o in outcomes]


def _trusted(settings: Settings, given: list[str] | None) -> list[str]:
    if given:
        return given
    store = open_store(settings)
    keys = []
    initial = store.get_meta("initial_vkey")
    if initial:
        keys.append(initial)
    if settings.key_path.exists():
        vkey = load_signer(settings, store).vkey
        if vkey not in keys:
            keys.append(vkey)
    return keys


def verify_store(
    store: LedgerStore,
    keys: list[str],
    *,
    trusted_checkpoint: str | None = None,
    allow_unsigned_tail: bool = False,
    progress: Callable[[int], object] | None = None,
    trusted_checkpoints: list[Trusted] | None = None,
    checkpoint_notes: list[str] | None = None,
) -> VerifyResult:
    """Verify a whole store: over its range reader in parallel when it is large, else in one pass.

    ``progress`` is called with the number of entries verified so far, after each chunk.
    """
    parallel = store.size() > 50_000 and hasattr(store, "range_reader")
    return verify_log(
        store.range_reader() if parallel else store.stored_entries(),  # type: ignore[attr-defined]
        checkpoint_notes if checkpoint_notes is not None else [c.note for c in store.checkpoints()],
        keys,
        origin=store.get_meta("origin"),
        trusted_checkpoint=trusted_checkpoint,
        trusted_checkpoints=trusted_checkpoints or [],
        allow_unsigned_tail=allow_unsigned_tail,
        workers=min(os.cpu_count() or 1, 4) if parallel else 1,
        progress=progress,
        approvals_from=required_from(store.get_meta(DECISIONS_FROM)),
    )


def cmd_verify(
    trusted_checkpoint: Annotated[
        list[Path] | None,
        typer.Option(exists=True, dir_okay=False, help="a signed checkpoint kept outside the system; repeatable"),
    ] = None,
    trusted_key: Annotated[
        list[str] | None, typer.Option(help="verifier key (vkey) to trust; repeatable")
    ] = None,
    allow_unsigned_tail: Annotated[
        bool, typer.Option(help="do not fail on entries newer than the last checkpoint")
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="auditor state file: the newest proven checkpoint, kept between runs"),
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(help="witness VKEY (stored cosignature) or URL=VKEY (also asked online); repeatable"),
    ] = None,
    witness_threshold: Annotated[
        int | None, typer.Option(min=1, help="cosignatures required (default: every --witness)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Recompute every leaf, run chain and the tree; check every checkpoint and key."""
    settings = Settings()
    store = open_store(settings)
    keys = _trusted(settings, trusted_key)
    witnesses = [parse_witness(w) for w in witness or []]
    threshold = len(witnesses) if witness_threshold is None else witness_threshold
    if witnesses and threshold > len(witnesses):
        raise ConfigError(f"--witness-threshold {threshold} is more than the {len(witnesses)} witnesses given")
    trusted = [Trusted(p.read_text(errors="replace"), f"trusted checkpoint {p}") for p in trusted_checkpoint or []]
    prior = read_state(state) if state is not None else None
    notes = [c.note for c in store.checkpoints()]
    total = store.size()
    with progress_bar(total, "verifying") as bar:
        task = bar.add_task("verify", total=total)
        result = verify_store(
            store,
            keys,
            trusted_checkpoints=[*trusted, *([prior] if prior else [])],
            checkpoint_notes=notes,
            allow_unsigned_tail=allow_unsigned_tail,
            progress=lambda n: bar.update(task, completed=n),
        )
    newest = max(notes, key=note_size) if notes else None
    if result.ok and witnesses and newest is not None:
        verdict = verify_witnesses(  # no signing key needed: proofs come from the stored tree
            store, newest, witnesses, threshold, lambda a, b: merkle.consistency_proof(a, b, store.node),
            settings.witness_timeout_s,
        )
        result.witnesses = asdict(verdict)
        if not verdict.ok:
            result.ok, result.reason = False, f"witnesses: {verdict.reason}"
    state_out = None
    if result.ok and state is not None and newest is not None:
        state_out = save_state(state, store, newest, witnesses, prior)
    if json_out:
        print_json({**result.to_json(), **({"state": state_out} if state is not None else {})})
    elif result.ok:
        c = console()
        c.print(
            f"[green]OK[/] {result.entries} entries, {result.runs} runs, "
            f"{result.checkpoints} checkpoints verified; root {result.root}"
        )
        if result.witnesses:
            c.print(f"  witnesses: {result.witnesses['cosigned']} of {len(witnesses)} cosigned the newest "
                    f"checkpoint (threshold {threshold})")
        if state_out:
            c.print(f"  state file {state}: checkpoint of size {state_out['size']}")
    else:
        where = f" at position {result.position}" if result.position is not None else ""
        console().print(f"[red]BREACH[/]{where}: {result.reason}", highlight=False)
    raise typer.Exit(0 if result.ok else 1)


def cmd_checkpoint(json_out: JsonOpt = False) -> None:
    """Print the latest signed checkpoint (signing one first if the tree grew), with cosignatures.

    With ``TACHO_WITNESSES``, it is pushed to the witnesses first (waiting at most
    ``TACHO_WITNESS_WAIT_S``) and printed with the cosignatures they returned.
    """
    settings = Settings()
    ledger = build_ledger(settings)
    row = ledger.checkpoint(force=False) or ledger.store.latest_checkpoint()
    if row is None:
        row = ledger.checkpoint(force=True)
    assert row is not None
    pushed = push_to_witnesses(settings, ledger)
    cosigs = ledger.store.cosignatures(row.size)
    note = row.note + "".join(c.line for c in cosigs)
    if json_out:
        print_json({"size": row.size, "note": note, "created": row.created,
                    "cosignatures": [asdict(c) for c in cosigs],
                    **({"witnesses": pushed} if pushed else {})})
    else:
        sys.stdout.write(note)
    if any(o["status"] in ("rollback", "fork") for o in pushed):
        raise typer.Exit(1)


def _workspace_of(settings: Settings, run_id: str, workspace: str | None) -> str:
    if workspace:
        return workspace
    found = open_store(settings).workspaces_of_run(run_id)
    if not found:
        raise NotFoundError(f"no run {run_id!r} in the ledger")
    if len(found) > 1:
        raise NotFoundError(f"run {run_id!r} exists in several workspaces {found}: pass --workspace")
    return found[0]


def cmd_evidence(
    run_id: str,
    out: Annotated[Path, typer.Option("-o", "--out", help="where to write the bundle")],
    workspace: Annotated[str | None, typer.Option(help="the run's workspace")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a self-contained evidence bundle for one run."""
    settings = Settings()
    ledger = build_ledger(settings)
    bundle = build_evidence(ledger, _workspace_of(settings, run_id, workspace), run_id)
    out.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n")
    if json_out:
        print_json({"run_id": run_id, "workspace": bundle["workspace"], "entries": len(bundle["entries"]),
                    "out": str(out)})
    else:
        err_console().print(f"wrote {len(bundle['entries'])} entries of run {run_id} to {out}")


def cmd_verify_evidence(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    trusted_key: Annotated[list[str] | None, typer.Option(help="vkey to trust; repeatable")] = None,
    allow_incomplete: Annotated[
        bool,
        typer.Option(help="accept a bundle without a signed run head (format /1): it cannot prove "
                          "that no entry after its last was left out"),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check an evidence bundle offline (no store needed), its completeness included."""
    try:
        bundle = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as e:
        bundle = None
        if not json_out:
            console().print(f"[red]not JSON:[/] {e}")
    result = verify_evidence(bundle, trusted_key or [], allow_incomplete=allow_incomplete)
    if json_out:
        print_json(result.to_json())
    elif result.ok:
        whole = "all" if result.whole else "NOT PROVEN TO BE ALL (no run head)"
        console().print(
            f"[green]OK[/] run {result.run_id} ({result.workspace}): {result.entries} entries, "
            f"{whole} of the run's entries in the signed tree of size {result.tree_size}; "
            f"outcome {result.outcome or 'not completed'}; trusted: {result.trusted}"
        )
    else:
        console().print(f"[red]INVALID[/] {result.reason}")
    raise typer.Exit(0 if result.ok else 1)


keys_app = typer.Typer(help="The ledger's signing keys.", no_args_is_help=False, invoke_without_command=True)


@keys_app.callback()
def cmd_keys(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show the public verifier key (signed-note vkey) of this ledger, and where its private key is."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings()
    store = open_store(settings)
    signer = load_signer(settings, store)
    data = {"vkey": signer.vkey, "name": signer.name, "initial_vkey": store.get_meta("initial_vkey"),
            "key_file": str(settings.key_path.resolve())}
    if json_out:
        print_json(data)
    else:
        console().print(signer.vkey)  # alone on stdout: `--trusted-key "$(tacho keys)"`
        err_console().print(f"private key: {data['key_file']}")


@keys_app.command("rotate")
def cmd_keys_rotate(json_out: JsonOpt = False) -> None:
    """Rotate the signing key: the old key signs the hand-over, recorded in the ledger."""
    settings = Settings()
    ledger = build_ledger(settings)
    new = NoteSigner.generate(ledger.signer.name)
    staged = settings.key_path.with_suffix(".new")
    if staged.exists():
        staged.unlink()
    write_secret(staged, new.skey + "\n")
    old = ledger.signer.vkey
    cp = ledger.rotate_key(new)
    retired = settings.key_path.with_name(f"{settings.key_path.stem}.{cp.size}.retired.skey")
    settings.key_path.rename(retired)
    staged.rename(settings.key_path)
    data = {"old_vkey": old, "new_vkey": new.vkey, "checkpoint_size": cp.size}
    if json_out:
        print_json(data)
    else:
        console().print(f"rotated: {old}\n     -> {new.vkey}")


quarantine_app = typer.Typer(help="Messages that could not be accepted.", no_args_is_help=True)


def _quarantine_json(r: QuarantineRow, raw: bool) -> dict[str, object]:
    out: dict[str, object] = {
        "id": r.id, "reason": r.reason, "source": r.source.to_json(), "received": r.received,
        "workspace": r.workspace, "run_id": r.run_id, "event_id": r.event_id, "bytes": r.raw_size,
        "sha256": (r.raw_sha256 or b"").hex(), "kept": r.kept,
    }
    out["raw" if raw else "preview"] = r.raw.decode("utf-8", errors="replace")
    return out


@quarantine_app.command("list")
def cmd_quarantine_list(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="most messages to list")] = 50,
    after: Annotated[int, typer.Option(help="show ids after this (the previous page's last id)")] = 0,
    workspace: Annotated[str | None, typer.Option(help="only this workspace's messages")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="every kept raw byte, not a 1 KiB preview")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List quarantined messages with their reasons, sizes and SHA-256 (a preview of the bytes)."""
    store = open_store(Settings())
    rows = store.quarantine(limit, after, workspace=workspace,
                            preview=None if raw else QUARANTINE_PREVIEW_BYTES)
    if json_out:
        usage = store.quarantine_usage()
        print_json(
            {
                "total": store.quarantine_count(),
                "usage": [{"workspace": ws, "items": u.items, "kept_bytes": u.kept_bytes,
                           "truncated": u.truncated} for ws, u in sorted(usage.items(), key=lambda x: x[0] or "")],
                "items": [_quarantine_json(r, raw) for r in rows],
                "next_after": rows[-1].id if len(rows) == limit else None,
            }
        )
        return
    table = Table("id", "received", "workspace", "source", "run", "bytes", "reason",
                  title=f"quarantine ({store.quarantine_count()})")
    for r in rows:
        src = ":".join(str(v) for k, v in r.source.to_json().items() if k != "kind")
        size = f"{r.raw_size:,}" + ("" if not r.truncated else f" (kept {r.kept:,})")
        table.add_row(str(r.id), r.received, r.workspace or "-", f"{r.source.kind} {src}",
                      r.run_id or "-", size, r.reason)
    console().print(table)


@quarantine_app.command("show")
def cmd_quarantine_show(
    qid: int,
    raw_out: Annotated[Path | None, typer.Option("--raw-out", help="write the kept raw bytes to this file")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one quarantined message, raw bytes included."""
    store = open_store(Settings())
    r = store.quarantined(qid)
    if r is None:
        raise NotFoundError(f"no quarantined message {qid}")
    if raw_out is not None:
        raw_out.write_bytes(r.raw)
    data = _quarantine_json(r, raw=True)
    if json_out:
        print_json(data)
    else:
        for k, v in data.items():
            console().print(f"[bold]{k}[/]: {v}", markup=True, soft_wrap=True)


def cmd_generate(
    out: Annotated[Path, typer.Argument(help="JSONL file to write")],
    runs: int = 1000,
    seed: int = 7,
    workspace: Annotated[list[str] | None, typer.Option(help="workspaces to spread runs over")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Generate realistic, contract-valid agent runs as JSONL (deterministic per seed).

    No person decides a generated run's approvals: each request expires, the run goes on without it.
    """
    w = Workload(seed=seed, runs=runs, workspaces=tuple(workspace or ["acme"]))
    n = 0
    with out.open("wb") as f:
        for ev in w.events():
            f.write(dumps(ev) + b"\n")
            n += 1
    if json_out:
        print_json({"events": n, "runs": runs, "out": str(out)})
    else:
        err_console().print(f"wrote {n} events of {runs} runs to {out}")


def cmd_schema() -> None:
    """Print the JSON Schema of the event contract."""
    print_json(json_schema())


def register(app: typer.Typer) -> None:
    """Add the ledger commands to the CLI."""
    app.command("import")(cmd_import)
    app.command("verify")(cmd_verify)
    app.command("checkpoint")(cmd_checkpoint)
    app.command("evidence")(cmd_evidence)
    app.command("verify-evidence")(cmd_verify_evidence)
    app.command("generate")(cmd_generate)
    app.command("schema")(cmd_schema)
    app.add_typer(keys_app, name="keys")
    app.add_typer(quarantine_app, name="quarantine")
