"""The aiohttp application and the server that takes already-accepted sockets from the listener."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bastion.config import Config
from bastion.tlsconfig import server_context

if TYPE_CHECKING:
    from bastion.listener import Peer

log = logging.getLogger(__name__)

# How long close() lets in-flight requests finish before their connections are dropped.
SHUTDOWN_TIMEOUT = 10.0

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    # aiohttp would otherwise announce its own and Python's versions.
    "Server": "bastion",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare reaches every response the router produced, the 404s included.
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Deny by default, and answer a wrong method like a missing route, so that probing
        # cannot tell which paths exist.
        status = 404 if exc.status == 405 else exc.status
        reason = "not found" if status == 404 else exc.reason.lower()
        return web.json_response({"error": reason}, status=status)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class _AccessLogger(AbstractAccessLogger):
    """Method, path and status only: query strings can carry tokens, so they are never logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time)


def create_app(config: Config) -> web.Application:
    """The console application: /healthz for now, everything else 404."""
    app = web.Application(middlewares=[_json_errors])
    app.router.add_get("/healthz", _healthz)
    app.on_response_prepare.append(_add_security_headers)
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
            await loop.connect_accepted_socket(
                lambda: server(), sock, ssl=self._ssl_context,
                ssl_handshake_timeout=self._config["listener.tls_handshake_timeout"])
        except OSError as exc:
            # A failed or abandoned handshake is the client's doing, not ours: note it and move on.
            # (ssl.SSLError, ConnectionError and TimeoutError are all OSErrors.)
            log.info("TLS handshake from %s failed: %s", peer.addr, _handshake_failure(exc))
            sock.close()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _handshake_failure(exc: OSError) -> str:
    # Only the class and OpenSSL's reason code: never anything the client sent.
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{type(exc).__name__} ({exc.reason})"
    return type(exc).__name__
