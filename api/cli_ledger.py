"""Ledger commands: import, verify, checkpoint, evidence, keys, quarantine, generate, schema."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from api.bootstrap import build_ledger, load_signer, open_store, write_secret
from api.output import console, err_console, print_json
from api.settings import Settings
from domain.canonical import dumps
from domain.errors import NotFoundError
from domain.events import json_schema
from domain.evidence import build_evidence, verify_evidence
from domain.note import NoteSigner
from domain.ports import LedgerStore
from domain.verify import VerifyResult, verify_log
from domain.workload import Workload
from ingest.jsonl import import_jsonl

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for machines")]


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
    ledger = build_ledger(Settings())
    total = _count_lines(file)
    with progress_bar(total, "importing") as bar:
        task = bar.add_task("import", total=total)
        totals = import_jsonl(ledger, file, batch_size, progress=lambda n: bar.advance(task, n))
    if json_out:
        print_json(totals.to_json())
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
) -> VerifyResult:
    """Verify a whole store: over its range reader in parallel when it is large, else in one pass.

    ``progress`` is called with the number of entries verified so far, after each chunk.
    """
    parallel = store.size() > 50_000 and hasattr(store, "range_reader")
    return verify_log(
        store.range_reader() if parallel else store.stored_entries(),  # type: ignore[attr-defined]
        [c.note for c in store.checkpoints()],
        keys,
        origin=store.get_meta("origin"),
        trusted_checkpoint=trusted_checkpoint,
        allow_unsigned_tail=allow_unsigned_tail,
        workers=min(os.cpu_count() or 1, 4) if parallel else 1,
        progress=progress,
    )


def cmd_verify(
    trusted_checkpoint: Annotated[
        Path | None, typer.Option(exists=True, help="a signed checkpoint kept outside the system")
    ] = None,
    trusted_key: Annotated[
        list[str] | None, typer.Option(help="verifier key (vkey) to trust; repeatable")
    ] = None,
    allow_unsigned_tail: Annotated[
        bool, typer.Option(help="do not fail on entries newer than the last checkpoint")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Recompute every leaf, run chain and the tree; check every checkpoint and key."""
    settings = Settings()
    store = open_store(settings)
    keys = _trusted(settings, trusted_key)
    total = store.size()
    with progress_bar(total, "verifying") as bar:
        task = bar.add_task("verify", total=total)
        result = verify_store(
            store,
            keys,
            trusted_checkpoint=trusted_checkpoint.read_text() if trusted_checkpoint else None,
            allow_unsigned_tail=allow_unsigned_tail,
            progress=lambda n: bar.update(task, completed=n),
        )
    if json_out:
        print_json(result.to_json())
    elif result.ok:
        console().print(
            f"[green]OK[/] {result.entries} entries, {result.runs} runs, "
            f"{result.checkpoints} checkpoints verified; root {result.root}"
        )
    else:
        console().print(f"[red]BREACH[/] at position {result.position}: {result.reason}")
    raise typer.Exit(0 if result.ok else 1)


def cmd_checkpoint(json_out: JsonOpt = False) -> None:
    """Print the latest signed checkpoint (signing one first if the tree grew)."""
    ledger = build_ledger(Settings())
    row = ledger.checkpoint(force=False) or ledger.store.latest_checkpoint()
    if row is None:
        row = ledger.checkpoint(force=True)
    assert row is not None
    if json_out:
        print_json({"size": row.size, "note": row.note, "created": row.created})
    else:
        sys.stdout.write(row.note)


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


@quarantine_app.command("list")
def cmd_quarantine_list(
    limit: int = 50, after: Annotated[int, typer.Option(help="show ids after this")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """List quarantined messages with their reasons."""
    store = open_store(Settings())
    rows = store.quarantine(limit, after)
    if json_out:
        print_json(
            {
                "total": store.quarantine_count(),
                "items": [
                    {"id": r.id, "reason": r.reason, "source": r.source.to_json(), "received": r.received,
                     "workspace": r.workspace, "run_id": r.run_id, "event_id": r.event_id, "bytes": len(r.raw)}
                    for r in rows
                ],
            }
        )
        return
    table = Table("id", "received", "source", "run", "reason", title=f"quarantine ({store.quarantine_count()})")
    for r in rows:
        src = ":".join(str(v) for k, v in r.source.to_json().items() if k != "kind")
        table.add_row(str(r.id), r.received, f"{r.source.kind} {src}", r.run_id or "-", r.reason)
    console().print(table)


@quarantine_app.command("show")
def cmd_quarantine_show(qid: int, json_out: JsonOpt = False) -> None:
    """Show one quarantined message, raw bytes included."""
    store = open_store(Settings())
    rows = [r for r in store.quarantine(1, qid - 1) if r.id == qid]
    if not rows:
        raise NotFoundError(f"no quarantined message {qid}")
    r = rows[0]
    data = {"id": r.id, "reason": r.reason, "source": r.source.to_json(), "received": r.received,
            "raw": r.raw.decode("utf-8", errors="replace")}
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
    """Generate realistic, contract-valid agent runs as JSONL (deterministic per seed)."""
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
