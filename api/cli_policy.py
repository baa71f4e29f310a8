"""``tacho policy``: publish, activate, list, show and diff policy revisions; print OPA's config.

Each command works on the local data directory's ledger, or, with ``--api-url`` (or
``TACHO_API_URL``) and an admin key in ``TACHO_API_KEY``, on a running ``tacho serve`` through
``/v1/policy``. Either way each change is a platform record in the ledger.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from api.output import JsonOpt, console, print_json
from api.settings import Settings
from domain.errors import TachographError
from ingest.policies import MAX_FILES, MAX_POLICY_BYTES

ApiUrl = Annotated[str | None, typer.Option(
    "--api-url", envvar="TACHO_API_URL",
    help="a running tacho serve (with an admin key in TACHO_API_KEY); default: the local ledger")]
Workspace = Annotated[str, typer.Option(help="the workspace (local ledger only; over the API, "
                                        "the key's)")]


class PolicyCliError(TachographError):
    """A policy command cannot be carried out (files unreadable, the API refused)."""


def read_policy_files(path: Path) -> dict[str, str]:
    """The ``.rego`` and ``data.json`` files of ``path`` (one file, or a directory walked in
    order), keyed by their path relative to the directory."""
    if not path.exists():
        raise PolicyCliError(f"{path}: no such file or directory")
    if path.is_file():
        pairs = [(path.name, path)]
    else:
        pairs = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*")
                       if p.is_file() and (p.suffix == ".rego" or p.name == "data.json")
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if len(pairs) > MAX_FILES:
        raise PolicyCliError(f"{path} holds {len(pairs)} policy files; a revision holds at most {MAX_FILES}")
    files: dict[str, str] = {}
    total = 0
    for name, p in pairs:
        total += p.stat().st_size
        if total > MAX_POLICY_BYTES:
            raise PolicyCliError(f"{path} holds over {MAX_POLICY_BYTES} bytes of policy files")
        try:
            files[name] = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise PolicyCliError(f"{p} is not UTF-8 text: {e}") from e
    if not files:
        raise PolicyCliError(f"{path} holds no .rego file")
    return files


class _Remote:
    """``/v1/policy`` of a running server, with an admin key."""

    def __init__(self, url: str) -> None:
        import httpx

        key = os.environ.get("TACHO_API_KEY")
        if not key:
            raise PolicyCliError("--api-url needs an admin key in TACHO_API_KEY")
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=120.0,
                                   headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        import httpx

        try:
            resp = self.client.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise PolicyCliError(f"{method} {path}: {type(e).__name__}: {e}") from e
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise PolicyCliError(f"{method} {path} answered {resp.status_code}: {str(detail)[:2000]}")
        out: dict[str, Any] = resp.json()
        return out


def _local() -> tuple[Any, dict[str, str]]:
    from api.bootstrap import build_ledger
    from api.policies import PolicyService

    ledger = build_ledger(Settings())
    actor = {"name": f"{getpass.getuser()} (tacho policy)", "via": "cli"}
    return PolicyService.with_local_opa(ledger, time.time), actor


def _show_revision(out: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(out)
        return
    c = console()
    state = "in force" if out.get("active") else "not in force"
    c.print(f"revision [bold]{out['revision']}[/] ({state}) {out['digest']}")
    c.print(f"  published by {out['published_by']} at {out['published_at']}"
            + (f": {out['message']}" if out.get("message") else ""))
    c.print(f"  fail closed for: {', '.join(out['fail_closed']) or 'nothing'}; checked with: "
            f"{out.get('checked_with') or 'not checked (no opa here)'}")
    for f in out["files"]:
        c.print(f"  {f['path']} ({f['bytes']} bytes)")


def cmd_publish(
    path: Annotated[Path, typer.Argument(help="a .rego file or a directory of .rego/data.json files")],
    activate: Annotated[bool, typer.Option(help="put it in force at once")] = False,
    fail_closed: Annotated[list[str] | None, typer.Option(
        help="side effect (none, read, write) denied while OPA is unreachable; repeat; "
        "default write")] = None,
    message: Annotated[str | None, typer.Option(help="what changed and why")] = None,
    reason: Annotated[str | None, typer.Option(help="why it is activated")] = None,
    workspace: Workspace = "default",
    api_url: ApiUrl = None,
    json_out: JsonOpt = False,
) -> None:
    """Publish a policy revision (checked with opa when it is here); --activate puts it in force."""
    files = read_policy_files(path)
    if api_url:
        body: dict[str, Any] = {"files": files, "fail_closed": fail_closed, "message": message,
                                "activate": activate, "reason": reason}
        out = _Remote(api_url).call("POST", "/v1/policy/revisions", json=body)
    else:
        service, actor = _local()
        rev, act = service.publish(actor, workspace, files, fail_closed=fail_closed, message=message,
                                   activate=activate, reason=reason)
        out = {**service.fold(workspace).revision_json(rev), "activation": act.to_json() if act else None}
    _show_revision(out, json_out)


def cmd_activate(
    revision: Annotated[str, typer.Argument(help="the revision id, e.g. 3-5f2a9c1e0b7d")],
    reason: Annotated[str | None, typer.Option(help="why")] = None,
    workspace: Workspace = "default",
    api_url: ApiUrl = None,
    json_out: JsonOpt = False,
) -> None:
    """Put a published revision in force (rolling back is activating an older one)."""
    if api_url:
        out = _Remote(api_url).call("PUT", "/v1/policy/active", json={"revision": revision, "reason": reason})
        changed = bool(out.get("changed"))
    else:
        service, actor = _local()
        act = service.activate(actor, workspace, revision, reason)
        changed = act is not None
        out = {"workspace": workspace, "revision": revision, "changed": changed,
               "activation": act.to_json() if act else None}
    if json_out:
        print_json(out)
    else:
        console().print(f"revision {revision} is in force" + ("" if changed else " (it was already)"))


def _revisions(workspace: str, api_url: str | None) -> dict[str, Any]:
    if api_url:
        return _Remote(api_url).call("GET", "/v1/policy/revisions")
    service, _ = _local()
    listing: dict[str, Any] = service.fold(workspace).listing()
    return listing


def cmd_list(workspace: Workspace = "default", api_url: ApiUrl = None, json_out: JsonOpt = False) -> None:
    """List the workspace's policy revisions, newest first, and which is in force."""
    out = _revisions(workspace, api_url)
    if json_out:
        print_json(out)
        return
    from rich.table import Table

    table = Table("revision", "in force", "ever in force", "published", "by", "fail closed", "message")
    for r in out["revisions"]:
        table.add_row(r["revision"], "yes" if r["active"] else "", "yes" if r["ever_active"] else "",
                      r["published_at"], r["published_by"], ",".join(r["fail_closed"]), r.get("message") or "")
    console().print(table)


def cmd_show(
    revision: Annotated[str, typer.Argument(help="the revision id")],
    files: Annotated[bool, typer.Option("--files", help="print the files' contents")] = False,
    workspace: Workspace = "default",
    api_url: ApiUrl = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one revision: digest, settings, who published it; --files prints its sources."""
    if api_url:
        out = _Remote(api_url).call("GET", f"/v1/policy/revisions/{quote(revision, safe='')}")
    else:
        service, _ = _local()
        out = service.fold(workspace).revision_json(service.revision(workspace, revision), files=True)
    _show_revision(out, json_out)
    if files and not json_out:
        for path, text in out["sources"].items():
            console().rule(path)
            typer.echo(text)


def cmd_diff(
    old: Annotated[str, typer.Argument(help="the older revision")],
    new: Annotated[str, typer.Argument(help="the newer revision")],
    workspace: Workspace = "default",
    api_url: ApiUrl = None,
    json_out: JsonOpt = False,
) -> None:
    """How one revision's files differ from another's (a unified diff per file)."""
    if api_url:
        out = _Remote(api_url).call("GET", "/v1/policy/diff", params={"from": old, "to": new})
    else:
        service, _ = _local()
        out = {"workspace": workspace, "from": old, "to": new, "files": service.diff(workspace, old, new)}
    if json_out:
        print_json(out)
        return
    for f in out["files"]:
        if f["status"] == "same":
            console().print(f"[dim]{f['path']}: same[/]")
            continue
        console().print(f"[bold]{f['path']}[/]: {f['status']} (+{f['added']} -{f['removed']})")
        for line in f["diff"]:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
            console().print(line, style=style, highlight=False, markup=False)


def opa_config(api_url: str, token: str, *, decision_logs: bool = True,
               long_poll_s: int = 30, rule: str = "tachograph/decision") -> dict[str, Any]:
    """OPA's configuration to load the workspace's active policy from ``api_url`` and (with
    ``decision_logs``) upload every decision it makes back to it."""
    config: dict[str, Any] = {
        "services": {"tachograph": {"url": api_url.rstrip("/") + "/v1",
                                    "credentials": {"bearer": {"token": token}}}},
        "bundles": {"tachograph": {"service": "tachograph", "resource": "policy/bundle.tar.gz",
                                   "polling": {"min_delay_seconds": 10, "max_delay_seconds": 20,
                                               "long_polling_timeout_seconds": long_poll_s}}},
        "default_decision": rule,
    }
    if decision_logs:
        # resources are relative to the service's URL, which ends in /v1 (OPA joins the two)
        config["decision_logs"] = {"service": "tachograph", "resource": "opa/logs",
                                   "reporting": {"min_delay_seconds": 1, "max_delay_seconds": 5}}
    return config


def cmd_opa_config(
    api_url: Annotated[str, typer.Option("--api-url", envvar="TACHO_API_URL",
                                         help="the address OPA reaches tacho serve at")],
    token_env: Annotated[str, typer.Option(
        help="environment variable OPA reads a publisher key from (OPA expands ${VAR})")] = "TACHO_OPA_KEY",
    decision_logs: Annotated[bool, typer.Option(help="also upload OPA's decision log")] = True,
) -> None:
    """Print an OPA configuration (JSON, which OPA reads as YAML) that loads the workspace's active
    policy from tacho serve (long polling) and uploads its decision log back to it."""
    typer.echo(json.dumps(opa_config(api_url, "${" + token_env + "}", decision_logs=decision_logs), indent=2))


def register(app: typer.Typer) -> None:
    """Add the ``policy`` group to the CLI."""
    group = typer.Typer(help="Policy revisions served to OPA: publish, activate, list, show, diff.",
                        no_args_is_help=True)
    group.command("publish")(cmd_publish)
    group.command("activate")(cmd_activate)
    group.command("list")(cmd_list)
    group.command("show")(cmd_show)
    group.command("diff")(cmd_diff)
    group.command("opa-config")(cmd_opa_config)
    app.add_typer(group, name="policy")
