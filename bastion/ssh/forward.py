"""Local port forwarding (direct-tcpip): refused unless granted, then opened from the target's side."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import asyncssh

from bastion.audit.events import Forward
from bastion.errors import BastionError
from bastion.policy import Allow, AllowChannel, decide_channel

if TYPE_CHECKING:
    from bastion.ssh.server import GatewayServer

log = logging.getLogger("bastion.ssh")
PENDING_LIMIT = 1 << 20


def _decide(server: "GatewayServer") -> AllowChannel | None:
    """From the login's authorization only: a quick answer before the channel opens."""
    authorization = server.authorization
    decision = decide_channel(authorization, "forward", server.services.clock.now()) if authorization else None
    return decision if isinstance(decision, AllowChannel) else None


async def _decide_fresh(server: "GatewayServer") -> AllowChannel | None:
    """Against the database, as every channel is: revocation and disabling apply at once."""
    login = server.authorization
    if login is None or server.flow.identity is None:
        return None
    now = server.services.clock.now()
    decision = await server.services.policy.authorize_target(server.flow.identity, login.target.name,
                                                             login.account.login, now)
    if not isinstance(decision, Allow):
        return None
    channel = decide_channel(decision.authorization, "forward", now)
    return channel if isinstance(channel, AllowChannel) else None


def forward_session(server: "GatewayServer", dest_host: str, dest_port: int) -> Any:
    """An SSHTCPSession for a granted forward, or False (refused and audited)."""
    if server.auth_ready.is_set() and _decide(server) is None:
        server._audit_forward_denied("local", dest_host, dest_port)
        return False
    # Either allowed, or authentication is still settling: the session decides (again) before opening.
    return _ForwardSession(server, dest_host[:255], dest_port)


class _Upstream(asyncssh.SSHTCPSession):
    def __init__(self, down: "_ForwardSession"):
        self.down = down

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.down.from_target(data)

    def eof_received(self) -> bool:
        if self.down.chan is not None:
            self.down.chan.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.finish("target closed the forward")

    def pause_writing(self) -> None:
        if self.down.chan is not None:
            self.down.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.down.chan is not None:
            self.down.chan.resume_reading()


class _ForwardSession(asyncssh.SSHTCPSession):
    """One forwarded TCP stream, recorded as a session of kind "forward" (metadata, not content)."""

    def __init__(self, server: "GatewayServer", host: str, port: int):
        self.server, self.host, self.port = server, host, port
        self.chan: asyncssh.SSHTCPChannel | None = None
        self.up: asyncssh.SSHTCPChannel | None = None
        self.live = None
        self._pending: list[bytes] = []
        self._ended = False

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:
        self.chan = chan
        task = asyncio.get_running_loop().create_task(self._open())
        self.server.channels.add(task)
        task.add_done_callback(self.server.channels.discard)

    async def _open(self) -> None:
        services = self.server.services
        try:
            await asyncio.wait_for(self.server.auth_ready.wait(), 30)
            decision = await _decide_fresh(self.server)
            if decision is None:
                self.server._audit_forward_denied("local", self.host, self.port)
                self.finish("forward not granted")
                return
            target_auth = decision.authorization.target_authorization
            self.live = await services.sessions.begin(
                decision.authorization, kind="forward", command=f"{self.host}:{self.port}",
                connection_id=self.server.connection_id, width=80, height=24, term="", echo_tracking=False,
                terminate_cb=lambda reason: self.finish(reason))
            await services.audit.emit(Forward(actor=target_auth.identity.name, source=target_auth.identity.source_addr,
                                              target=target_auth.target.name, session_id=self.live.id,
                                              dest_host=self.host, dest_port=self.port))
            self.live.recorder.marker(f"forward to {self.host}:{self.port}")
            conn = await self.server.upstream(target_auth, self.live.id)
            self.up, _ = await conn.create_connection(lambda: _Upstream(self), self.host, self.port)
        except asyncio.CancelledError:
            raise
        except (BastionError, asyncssh.Error, OSError, asyncio.TimeoutError):
            self.finish("forward could not be opened")
            return
        for data in self._pending:
            self.up.write(data)
        self._pending.clear()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.live is not None:
            self.live.bytes_up += len(data)
        if self.up is not None:
            self.up.write(data)
        else:
            self._pending.append(data)
            if sum(map(len, self._pending)) > PENDING_LIMIT and self.chan is not None:
                self.chan.pause_reading()

    def from_target(self, data: bytes) -> None:
        if self.live is not None:
            self.live.bytes_down += len(data)
        if self.chan is not None:
            self.chan.write(data)

    def eof_received(self) -> bool:
        if self.up is not None:
            self.up.write_eof()
        return True

    def pause_writing(self) -> None:
        # the client is not reading: stop reading from the target instead of buffering without bound
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("client closed the forward")

    def finish(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        if self.up is not None:
            self.up.close()
        if self.chan is not None:
            self.chan.close()
        if self.live is not None:
            task = asyncio.get_running_loop().create_task(self.server.services.sessions.end(self.live, reason))
            self.server.channels.add(task)
            task.add_done_callback(self.server.channels.discard)
