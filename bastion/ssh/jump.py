"""ProxyJump (`ssh -J`) termination: a direct-tcpip channel to port 22 of a granted target becomes an SSH
server of the gateway's own, so the hop is authorized, uses the bastion's credentials and is recorded.

`ssh -J alice@bastion root@web01` asks the jump host for a TCP stream to web01:22 and runs a second SSH
connection through it. Forwarded as it is, that connection would end at the target's sshd: the user would
need the target's credentials and the gateway would see only ciphertext. Here the gateway answers it itself:
the inner connection is authenticated by the outer login it runs inside (the identity, its level and device
as proven there; nothing more is asked), `root` names the account, and its channels are served exactly as
those of a direct `alice:web01:root` login (policy, upstream with the bastion's key, recording).

The inner connection presents the gateway's own host key under the target's name: users pin it once (or
set `HostKeyAlias`), as with any jump host that terminates connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable

import asyncssh

from bastion.admin import TARGET_NAME
from bastion.audit.events import ProxyJump, SessionDenied
from bastion.policy import Allow, Deny
from bastion.ssh.routing import Route
from bastion.ssh.server import GatewayServer

if TYPE_CHECKING:
    from bastion.auth.identity import Identity

log = logging.getLogger("bastion.ssh")

SSH_PORT = 22
# Hops open at once through one outer connection: each holds a socket pair and an SSH connection of its own
# (and its upstream), so an unbounded number would let one login exhaust the gateway's descriptors.
MAX_HOPS = 8
# The inner connection authenticates at once (nothing is asked): a hop that has not within this is dropped.
INNER_LOGIN_TIMEOUT = 10.0
# Bytes the client may have in flight towards the inner server before its channel is paused.
PENDING_LIMIT = 1 << 20
READ_SIZE = 256 * 1024
SETTLE_TIMEOUT = 30.0


def is_jump(dest_host: str, dest_port: int) -> bool:
    """Could this direct-tcpip request be a ProxyJump hop to a target named `dest_host`?"""
    return dest_port == SSH_PORT and bool(TARGET_NAME.fullmatch(dest_host))


async def open_jump(outer: "GatewayServer", dest_host: str, dest_port: int,
                    otherwise: Callable[[], Any]) -> Any:
    """The channel's session: the inner SSH server if the outer identity holds a grant on target `dest_host`;
    else whatever `otherwise()` gives (the plain forward's decision), so a name that is no target of this
    user is refused exactly as any other forward."""
    try:
        await asyncio.wait_for(outer.auth_ready.wait(), SETTLE_TIMEOUT)
    except asyncio.TimeoutError:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused") from None
    identity = outer.flow.identity
    if identity is not None:
        decision = await outer.services.policy.authorize_target(identity, dest_host, None,
                                                                outer.services.clock.now())
        if not isinstance(decision, Deny) or decision.ambiguous_accounts:
            if outer.hops >= MAX_HOPS:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE,
                                                f"at most {MAX_HOPS} ProxyJump hops at once per connection")
            return _JumpChannel(outer, identity, dest_host)
    result = otherwise()
    if not result:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused")
    return result


class _JumpChannel(asyncssh.SSHTCPSession):
    """The client's direct-tcpip channel, joined through a socket pair to an inner SSH server connection."""

    def __init__(self, outer: "GatewayServer", identity: "Identity", target: str):
        self.outer, self.identity, self.target = outer, identity, target
        self.chan: asyncssh.SSHTCPChannel | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._early: list[bytes] = []
        self._eof = False
        self._client_reading = asyncio.Event()  # cleared while the channel's send buffer is over its limit
        self._client_reading.set()

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:
        self.chan = chan
        self.outer.hops += 1
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.outer.channels.add(self._task)
        self._task.add_done_callback(self.outer.channels.discard)

    async def _run(self) -> None:
        ours, theirs = socket.socketpair()
        serving: asyncio.Task | None = None
        try:
            reader, self._writer = await asyncio.open_connection(sock=ours)
            for data in self._early:
                self._writer.write(data)
            self._early.clear()
            if self._eof:
                self._writer.write_eof()
            serving = asyncio.get_running_loop().create_task(
                self.outer.serve_inner(theirs, self.identity, self.target))
            await self._pump(reader)
        except asyncio.CancelledError:
            raise
        except (OSError, asyncssh.Error) as exc:
            log.debug("proxyjump to %s ended: %s", self.target, type(exc).__name__)
        finally:
            # Once asyncssh runs on it, its transport owns `theirs` and closing the connection closes it.
            if serving is not None and serving.done() and not serving.cancelled() and serving.exception() is None:
                serving.result().close()
            else:
                if serving is not None:
                    serving.cancel()
                theirs.close()
            if self._writer is not None:
                self._writer.close()
            else:
                ours.close()
            if self.chan is not None:
                self.chan.close()

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        """The inner server's bytes to the client, paced by the channel (asyncssh pauses us over its limit)."""
        assert self.chan is not None
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                self.chan.write_eof()
                return
            self.chan.write(data)
            while not self._client_reading.is_set():
                # A client may stop reading for a long time (a paused terminal); wait as long as its
                # channel is open, looking again every few seconds.
                try:
                    await asyncio.wait_for(self._client_reading.wait(), SETTLE_TIMEOUT)
                except asyncio.TimeoutError:
                    if self.chan.is_closing():
                        raise ConnectionResetError("client channel closed") from None

    def pause_writing(self) -> None:
        self._client_reading.clear()

    def resume_writing(self) -> None:
        self._client_reading.set()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self._writer is None:
            self._early.append(data)
            return
        self._writer.write(data)
        transport = self._writer.transport
        if self.chan is not None and transport.get_write_buffer_size() > PENDING_LIMIT:
            self.chan.pause_reading()
            task = asyncio.get_running_loop().create_task(self._resume_when_drained())
            self.outer.channels.add(task)
            task.add_done_callback(self.outer.channels.discard)

    async def _resume_when_drained(self) -> None:
        if self._writer is None:
            return
        try:
            await asyncio.wait_for(self._writer.drain(), SETTLE_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            if self.chan is not None:
                self.chan.close()
            return
        if self.chan is not None:
            self.chan.resume_reading()

    def eof_received(self) -> bool:
        if self._writer is None:
            self._eof = True
        elif self._writer.can_write_eof():
            self._writer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # The client's channel is gone: so is the hop, with every session inside it.
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.chan is not None:
            self.outer.hops -= 1
            self.chan = None


class _BoundFlow:
    """The inner connection's stand-in for AuthFlow: the identity its outer login proved, nothing to ask."""

    def __init__(self, identity: "Identity", peer_mac: str | None):
        self.identity, self.peer_mac = identity, peer_mac
        self.login_name = identity.name


class JumpServer(GatewayServer):
    """The SSH server at the far end of a ProxyJump hop: no authentication of its own (the outer login's
    identity is bound to it), the target fixed by the hop, the account named by the inner user name."""

    def __init__(self, services: Any, peer: Any, frontend: Any, identity: "Identity", target: str,
                 peer_mac: str | None, outer_connection_id: str):
        super().__init__(services, peer, frontend)
        self._outer_connection_id = outer_connection_id
        self._bound = identity
        self._target = target
        self.flow = _BoundFlow(identity, peer_mac)  # type: ignore[assignment]

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    async def begin_auth(self, username: str) -> bool:
        """Decide the hop for the account `username` names: no authentication needed if allowed (asyncssh
        then accepts the "none" method), else refused with one line (no method is offered)."""
        self.authorization = None
        self.ambiguous_accounts = ()
        self.route = Route(self._bound.name, self._target, username[:64] or None)
        decision = await self.services.policy.authorize_target(self._bound, self._target, self.route.account,
                                                               self.services.clock.now())
        if isinstance(decision, Allow):
            self.authorization = decision.authorization
            await self.services.audit.emit(ProxyJump(
                actor=self._bound.name, source=self._bound.source_addr, target=self._target,
                account=decision.authorization.account.login, outer_connection_id=self._outer_connection_id,
                connection_id=self.connection_id))
            return False
        await self._refuse_hop(decision)
        self._rejected()  # as for any login: dropped after MAX_REJECTIONS
        return True

    async def _refuse_hop(self, decision: Any) -> None:
        if isinstance(decision, Deny):
            text = decision.user_message or f"no access to {self._target} as {self.route.account or 'this account'}"
            reason = decision.reason
        else:  # StepUp
            text = (f"{self._target} needs authentication level {decision.level}, above this login's; jump "
                    f"through a login that reaches it: ssh -J {self._bound.name}:{self._target}@BASTION ...")
            reason = f"level {decision.level} needed"
        self._banner(f"bastion: {text}\r\n")
        await self.services.audit.emit(SessionDenied(actor=self._bound.name, source=self._bound.source_addr,
                                                     target=self._target, kind="proxyjump", reason=reason[:256],
                                                     account=(self.route.account or "")[:64]))

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        from bastion.ssh.forward import forward_session

        return forward_session(self, dest_host, dest_port)  # no hop from a hop: a forward at most
