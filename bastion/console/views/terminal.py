"""The web terminal: xterm.js over a websocket, through the same policy, upstream and recorder as SSH."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import asyncssh
from aiohttp import WSMsgType, web

from bastion.audit.events import SessionDenied
from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.errors import BastionError, RecordingError, UpstreamError
from bastion.policy import Allow, AllowChannel, StepUp, decide_channel
from bastion.sessions.bridge import Bridge

log = logging.getLogger("bastion.console")
HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
MAX_MESSAGE = 64 * 1024
SETUP_TIMEOUT = 10.0


class WebSocketDownstream:
    """The user's side of a bridge, on a websocket: bounded output queue, flow control both ways."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.bridge: Bridge | None = None
        self._queue: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self._queued = 0
        self._paused_target = False
        self.reading = asyncio.Event()
        self.reading.set()
        self.sender = asyncio.get_running_loop().create_task(self._send())

    def _put(self, item: bytes | str | None) -> None:
        self._queue.put_nowait(item)
        if isinstance(item, bytes):
            self._queued += len(item)
            if self._queued > HIGH_WATER and not self._paused_target and self.bridge is not None:
                self._paused_target = True
                self.bridge.downstream_paused()

    async def _send(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                await self.ws.close()
                return
            try:
                if isinstance(item, bytes):
                    self._queued -= len(item)
                    await self.ws.send_bytes(item)
                    if self._paused_target and self._queued < LOW_WATER and self.bridge is not None:
                        self._paused_target = False
                        self.bridge.downstream_resumed()
                else:
                    await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return

    # Downstream protocol -------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._put(bytes(data))

    def write_stderr(self, data: bytes) -> None:
        self._put(bytes(data))

    def write_eof(self) -> None:
        pass

    def exit(self, status: int) -> None:
        self._put(json.dumps({"type": "exit", "status": status}))
        self._put(None)

    def exit_with_signal(self, signal: str, core_dumped: bool = False, msg: str = "", lang: str = "") -> None:
        self._put(json.dumps({"type": "exit", "signal": signal}))
        self._put(None)

    def close(self) -> None:
        self._put(None)

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()


async def _close(ws: web.WebSocketResponse, code: int, message: str) -> web.WebSocketResponse:
    await ws.send_str(json.dumps({"type": "error", "message": message}))
    await ws.close(code=code, message=message[:120].encode())
    return ws


async def terminal_page(request: web.Request) -> web.Response:
    target, account = request.match_info["target"], request.match_info["account"]
    return render.page(request, "terminal.html", csp="terminal", target=target, account=account)


async def terminal_socket(request: web.Request) -> web.StreamResponse:
    services = request.app[render.SERVICES]
    who = caller(request)
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30)
    await ws.prepare(request)
    target, account = request.match_info["target"], request.match_info["account"]
    identity = who.identity()
    now = services.clock.now()
    decision = await services.policy.authorize_target(identity, target, account, now)
    if isinstance(decision, StepUp):
        return await _close(ws, 4003, f"step-up to level {decision.level} needed")
    if not isinstance(decision, Allow):
        return await _close(ws, 4004, "no such target or access denied")
    channel = decide_channel(decision.authorization, "shell", now)
    if not isinstance(channel, AllowChannel):
        await services.audit.emit(SessionDenied(actor=identity.name, source=identity.source_addr, target=target,
                                                kind="shell", reason=channel.reason))
        return await _close(ws, 4004, "an interactive shell is not granted to you")
    cols, rows = 80, 24
    try:
        first = await asyncio.wait_for(ws.receive(), SETUP_TIMEOUT)
        if first.type == WSMsgType.TEXT:
            message = json.loads(first.data)
            cols, rows = _size(message, cols, rows)
    except (asyncio.TimeoutError, ValueError, TypeError):
        pass
    downstream = WebSocketDownstream(ws)
    holder: dict[str, Bridge] = {}
    try:
        live = await services.sessions.begin(
            channel.authorization, kind="shell", command="", connection_id=str(uuid.uuid4()),
            width=cols, height=rows, term="xterm-256color", echo_tracking=True,
            terminate_cb=lambda reason: holder["bridge"].terminate(reason) if "bridge" in holder else None)
    except RecordingError as exc:
        return await _close(ws, 4500, exc.safe_message)
    bridge = Bridge(live, downstream, services.sessions)
    holder["bridge"] = bridge
    downstream.bridge = bridge
    upstream = None
    try:
        upstream = await services.upstream.connect(decision.authorization, live.id)
        await bridge.start(upstream, term_type="xterm-256color", term_size=(cols, rows, 0, 0), env={"LANG": "C.UTF-8"},
                           window=services.config["ssh.window"])
        await _pump(ws, downstream, bridge)
    except asyncio.CancelledError:
        bridge.terminate("the console connection closed")
        raise
    except (UpstreamError, asyncssh.Error, OSError) as exc:
        message = exc.safe_message if isinstance(exc, BastionError) else "the target refused the session"
        live.end_reason = "upstream failure"
        bridge.terminate(message)
    finally:
        bridge.user_gone(None)
        await asyncio.wait([downstream.sender], timeout=5)
        if upstream is not None:
            upstream.close()
    return ws


def _size(message: Any, cols: int, rows: int) -> tuple[int, int]:
    if isinstance(message, dict) and message.get("type") == "resize":
        c, r = message.get("cols"), message.get("rows")
        if isinstance(c, int) and isinstance(r, int) and 1 <= c <= 1000 and 1 <= r <= 1000:
            return c, r
    return cols, rows


async def _pump(ws: web.WebSocketResponse, downstream: WebSocketDownstream, bridge: Bridge) -> None:
    while not ws.closed:
        await downstream.reading.wait()
        message = await ws.receive()
        if message.type == WSMsgType.BINARY:
            bridge.user_data(message.data)
        elif message.type == WSMsgType.TEXT:
            try:
                control = json.loads(message.data)
            except ValueError:
                continue
            if isinstance(control, dict) and control.get("type") == "resize":
                cols, rows = _size(control, 0, 0)
                if cols:
                    bridge.resize(cols, rows)
            elif isinstance(control, dict) and control.get("type") == "input" and isinstance(control.get("data"), str):
                bridge.user_data(control["data"].encode())
        else:
            return


ROUTES = [
    Route("GET", "/terminal/{target}/{account}", terminal_page, Access.AUTHENTICATED, "Web terminal page"),
    Route("GET", "/api/v1/terminal/{target}/{account}", terminal_socket, Access.AUTHENTICATED,
          "Web terminal websocket (binary frames: keystrokes and output; text frames: JSON control)",
          websocket=True),
]
