"""The route table: every console route with who may call it; a route without a rule is never served."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Access(enum.Enum):
    """Who may reach a route (roles come from the user; "authenticated" is any logged-in user)."""

    PUBLIC = "public"            # anyone, no session needed (login page, health, static)
    LOGIN = "login"              # a login in progress (first factor given) or a full session
    AUTHENTICATED = "authenticated"
    AUDITOR = "auditor"
    ADMIN = "admin"


@dataclass(frozen=True)
class Route:
    """One route: method, path, handler and its rule; API routes are also described in OpenAPI."""

    method: str
    path: str
    handler: Handler
    access: Access
    summary: str
    min_level: int = 1              # console sessions below it are sent to step-up
    scope: str = ""                 # API-token scope that may call it ("" = sessions only)
    body: dict[str, Any] | None = None      # JSON schema of the request body (API POSTs)
    form: dict[str, Any] | None = None      # schema of a multipart/form-data body (streamed uploads)
    params: dict[str, Any] = field(default_factory=dict)  # query parameters: name -> JSON schema
    response: dict[str, Any] | None = None  # JSON schema of a 200 answer
    websocket: bool = False

    @property
    def api(self) -> bool:
        return self.path.startswith("/api/")

    @property
    def changes_state(self) -> bool:
        return self.method not in ("GET", "HEAD")

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


ROUTE_KEY = web.AppKey("bastion_route", dict)


def install(app: web.Application, routes: list[Route]) -> None:
    """Register handlers; the middleware finds each request's Route by the matched resource."""
    table: dict[tuple[str, str], Route] = {}
    for route in routes:
        registered = app.router.add_route(route.method, route.path, route.handler)
        # The key is the resource's canonical path ("/x/{id}"), which is what a matched request reports.
        key = (route.method, registered.resource.canonical)
        if key in table:
            raise ValueError(f"route defined twice: {route.name}")
        table[key] = route
    app[ROUTE_KEY] = table


def route_of(request: web.Request) -> Route | None:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if resource is None or info.http_exception is not None:
        return None
    canonical = resource.canonical
    return request.app[ROUTE_KEY].get((request.method if request.method != "HEAD" else "GET", canonical))
