"""Adding routers' routes to the app as they were built."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI


def include_routes(app: FastAPI, *routers: APIRouter) -> None:
    """Add each router's routes to ``app`` as they are.

    ``app.include_router`` would build every route a second time, for its inclusion context
    (a prefix, dependencies, tags to add), and this FastAPI builds that copy in the first
    request: about 0.1 s of the server's first answer. Our routers carry their tags and prefix
    in their routes already and have nothing else to apply; one that does is refused.
    """
    for router in routers:
        if router.on_startup or router.on_shutdown or router.dependencies:
            raise ValueError("a router with startup/shutdown handlers or dependencies needs include_router")
        app.router.routes.extend(router.routes)
