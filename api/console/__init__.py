"""The operator console: server-rendered pages on the API service, mounted under ``/console``."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.console.actions import RevertHook, load_revert_hooks
from api.console.board import TABLES, Board, BoardProjection
from api.console.session import Sessions
from api.console.state import ConsoleState
from api.deps import Services
from api.read_side import open_view
from api.routing import include_routes


def mount_console(app: FastAPI, services: Services,
                  revert_hooks: Mapping[str, RevertHook] | None = None) -> ConsoleState:
    """Add the console's pages and static files to the app (hooks default to entry points)."""
    from api.console.kill_switch import router as kill_switch_router
    from api.console.policies import router as policies_router
    from api.console.routes import router

    store = services.ledger.store
    board = Board(store, open_view(store, services.settings.data_dir, BoardProjection.name, TABLES),
                  wait_s=services.settings.read_wait_s)
    services.extra_read_models.append(board)
    state = ConsoleState(
        sessions=Sessions(services.keys, services.clock),
        board=board,
        revert_hooks=load_revert_hooks() if revert_hooks is None else revert_hooks,
    )
    app.state.console = state
    include_routes(app, router, kill_switch_router, policies_router)
    app.mount("/console/static", StaticFiles(directory=str(files("api.console") / "static")),
              name="console-static")
    return state
