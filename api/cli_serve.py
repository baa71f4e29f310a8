"""``tacho serve`` (the HTTP API under uvicorn) and ``tacho apikey create|list|revoke``."""

from __future__ import annotations

import gc
import time
from typing import Annotated

import typer

from api.keys_store import ROLES, KeyStore, parse_expiry
from api.output import JsonOpt, console, print_json
from api.settings import Settings

SHUTDOWN_GRACE_S = 5
"""Seconds ``tacho serve`` waits for open requests when it is told to stop."""


def _keys(settings: Settings) -> KeyStore:
    return KeyStore(settings.data_dir / "keys" / "apikeys.db", time.time)


def cmd_serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the HTTP API (OpenAPI docs offline at /docs); signs the tail when due and expires
    held events in the background while it serves."""
    # the imports and create_app make ~150,000 objects that live as long as the server (and under a
    # thousand that are garbage): collecting as they come costs ~40 ms of the start, so the cyclic
    # collector waits, and then leaves them out of its scans for good (gc.freeze)
    gc.disable()
    try:
        import uvicorn

        from api.app import create_app
        from api.deps import Limits

        settings = Settings()
        limits = Limits(max_body_bytes=settings.api_max_body_bytes, max_batch=settings.api_max_batch)
        app = create_app(settings, limits=limits, housekeeping=True)
    finally:
        gc.freeze()
        gc.enable()
    # long polls (approvals up to 30 s, OPA's bundle polls up to 120 s) must not hold a stop up:
    # after SHUTDOWN_GRACE_S the requests still open are cancelled (their clients poll again)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


def cmd_create(
    workspace: Annotated[str, typer.Option(help="the workspace the key may see")],
    role: Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)}")],
    expires: Annotated[str | None, typer.Option(help="30d, 12h, 90m or an RFC 3339 time")] = None,
    label: Annotated[
        str, typer.Option("--label", "--name", help="who uses the key (a person's name for the console)")
    ] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create an API key; its secret is printed once and stored only as a SHA-256 hash."""
    store = _keys(Settings())
    when = parse_expiry(expires, time.time()) if expires else None
    key, secret = store.create(workspace, role, when, label)
    if json_out:
        print_json({"key": key.to_json(), "secret": secret})
        return
    c = console()
    c.print(f"created key [bold]{key.id}[/] ({key.role} of {key.workspace}"
            f"{', expires ' + key.expires if key.expires else ''})")
    c.print("secret (shown once, store it now):")
    typer.echo(secret)


def cmd_list(
    workspace: Annotated[str | None, typer.Option(help="only this workspace")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List API keys (never their secrets)."""
    keys = _keys(Settings()).list(workspace)
    if json_out:
        print_json([k.to_json() for k in keys])
        return
    from rich.table import Table

    table = Table("id", "workspace", "role", "created", "expires", "revoked", "label")
    for k in keys:
        table.add_row(k.id, k.workspace, k.role, k.created, k.expires or "", k.revoked or "", k.label)
    console().print(table)


def cmd_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (tacho_<id>_...)")],
    json_out: JsonOpt = False,
) -> None:
    """Revoke an API key now."""
    key = _keys(Settings()).revoke(key_id)
    if json_out:
        print_json(key.to_json())
    else:
        console().print(f"revoked key {key.id} at {key.revoked}")


def register(app: typer.Typer) -> None:
    """Add ``serve`` and the ``apikey`` group to the CLI."""
    app.command("serve")(cmd_serve)
    keys = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
    keys.command("create")(cmd_create)
    keys.command("list")(cmd_list)
    keys.command("revoke")(cmd_revoke)
    app.add_typer(keys, name="apikey")
