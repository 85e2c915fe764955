"""The console application (routes, middleware, templates) and the server that takes accepted sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bastion.apitokens import ApiTokens
from bastion.auth.webauthn import WebAuthnService
from bastion.config import Config
from bastion.console import middleware, openapi, render
from bastion.console.routes import Access, Route, install
from bastion.console.websession import SessionStore
from bastion.tlsconfig import server_context

if TYPE_CHECKING:
    from bastion.listener import Peer
    from bastion.services import Services

log = logging.getLogger(__name__)

# How long close() lets in-flight requests finish before their connections are dropped.
SHUTDOWN_TIMEOUT = 10.0
SECURITY_HEADERS = middleware.SECURITY_HEADERS
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png",
                ".woff2": "font/woff2", ".map": "application/json"}


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _static(root: Path):
    root = root.resolve()

    async def serve(request: web.Request) -> web.StreamResponse:
        wanted = (root / request.match_info["path"]).resolve()
        # Only regular files inside web/static, of the few types the console ships.
        if root not in wanted.parents or not wanted.is_file() or wanted.suffix not in STATIC_TYPES:
            raise web.HTTPNotFound()
        response = web.FileResponse(wanted, headers={"Content-Type": STATIC_TYPES[wanted.suffix],
                                                     "Cache-Control": "private, max-age=300"})
        return response

    return serve


def all_routes(web_dir: Path) -> list[Route]:
    from bastion.console.views import (admin, approve, audit, datasets, login, me, policy, publishing, search,
                                       terminal)

    routes = [
        Route("GET", "/healthz", _healthz, Access.PUBLIC, "Health check"),
        Route("GET", "/static/{path:[A-Za-z0-9_./-]{1,200}}", _static(web_dir / "static"), Access.PUBLIC,
              "Static assets"),
        *login.ROUTES, *me.ROUTES, *terminal.ROUTES, *approve.ROUTES, *audit.ROUTES, *search.ROUTES,
        *admin.ROUTES, *policy.ROUTES, *datasets.ROUTES, *publishing.ROUTES,
    ]

    async def spec(request: web.Request) -> web.Response:
        return web.json_response(document)

    routes.append(Route("GET", "/api/v1/openapi.json", spec, Access.PUBLIC, "This OpenAPI document"))
    document = openapi.document(routes)
    return routes


class _AccessLogger(AbstractAccessLogger):
    """Method, path and status only: query strings can carry tokens, so they are never logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time)


def create_app(config: Config, services: "Services | None" = None, web_dir: Path | None = None) -> web.Application:
    """The console. Without services (listener tests) only /healthz is served; everything else is 404."""
    app = web.Application(middlewares=[middleware.errors, middleware.gatekeeper], client_max_size=1 << 20)
    app.on_response_prepare.append(middleware.security_headers)
    app[render.PEERS] = render.PeerTable()
    if services is None:
        install(app, [Route("GET", "/healthz", _healthz, Access.PUBLIC, "Health check")])
        return app
    web_dir = web_dir or render.WEB_DIR
    app[render.SERVICES] = services
    app[render.SESSIONS] = SessionStore(services.db, services.clock, services.config)
    app[render.TOKENS] = ApiTokens(services.db, services.audit, services.clock)
    app[render.WEBAUTHN] = WebAuthnService(config["console.rp_id"])
    app[render.JINJA] = render.environment(web_dir / "templates")
    install(app, all_routes(web_dir))
    return app


class ConsoleServer:
    """Serves the console on sockets the listener has accepted and routed here as TLS."""

    def __init__(self, config: Config, ssl_context: ssl.SSLContext | None = None,
                 app: web.Application | None = None):
        self._config = config
        self._ssl_context = ssl_context
        self._app = app if app is not None else create_app(config)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self._ssl_context is None:
            self._ssl_context = server_context(self._config.keys_dir)
        runner = web.AppRunner(self._app, access_log_class=_AccessLogger,
                               access_log=logging.getLogger("bastion.console.access"),
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runner = runner

    async def handle(self, sock: socket.socket, peer: "Peer") -> None:
        """Run the TLS handshake on `sock` and attach it to the app; returns once the handshake is done.

        The connection then lives on inside aiohttp until the client leaves or `close()`.
        """
        runner = self._runner
        if runner is None or runner.server is None:
            sock.close()
            raise RuntimeError("ConsoleServer.handle() before start()")
        server = runner.server
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: server(), sock, ssl=self._ssl_context,
                ssl_handshake_timeout=self._config["listener.tls_handshake_timeout"])
        except OSError as exc:
            # A failed or abandoned handshake is the client's doing, not ours: note it and move on.
            # (ssl.SSLError, ConnectionError and TimeoutError are all OSErrors.)
            log.info("TLS handshake from %s failed: %s", peer.addr, _handshake_failure(exc))
            sock.close()
            return
        # Requests find their real peer (PROXY v2 address) through their transport.
        self._app[render.PEERS].add(transport, peer)

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _handshake_failure(exc: OSError) -> str:
    # Only the class and OpenSSL's reason code: never anything the client sent.
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{type(exc).__name__} ({exc.reason})"
    return type(exc).__name__
