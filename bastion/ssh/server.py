"""The asyncssh server: authentication callbacks and per-connection state for one client."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

import asyncssh

from bastion.audit.events import ForwardDenied
from bastion.auth.flow import AuthFlow
from bastion.auth.identity import Identity
from bastion.errors import UpstreamError
from bastion.policy import Allow, Deny, StepUp, TargetAuthorization
from bastion.ssh.routing import Route, parse_login

if TYPE_CHECKING:
    from bastion.listener import Peer
    from bastion.services import Services

log = logging.getLogger("bastion.ssh")


class GatewayServer(asyncssh.SSHServer):
    """One client connection: who it is, where it goes, and its upstream connections."""

    def __init__(self, services: "Services", peer: "Peer"):
        self.services = services
        self.peer = peer
        self.connection_id = str(uuid.uuid4())
        self.conn: asyncssh.SSHServerConnection | None = None
        self.route: Route | None = None
        self.flow = AuthFlow(services.authenticator, peer.addr, peer.port)
        self.authorization: TargetAuthorization | None = None
        self.ambiguous_accounts: tuple[str, ...] = ()
        self._pending_key: str | None = None
        self._upstreams: dict[tuple[int, int], asyncssh.SSHClientConnection] = {}
        self._upstream_lock = asyncio.Lock()
        self.channels: set[Any] = set()
        # Set once auth_completed has settled identity and route; channels wait for it.
        self.auth_ready = asyncio.Event()

    # connection ------------------------------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        for upstream in self._upstreams.values():
            upstream.close()
        self._upstreams.clear()
        self.peer.closed()

    # authentication --------------------------------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        self.route = parse_login(username)
        # An unparseable name is handled exactly like an unknown user: same methods, same cost, same failure.
        await self.flow.start(self.route.user if self.route else "\x00invalid")
        self.flow.login_name = self.route.user if self.route else username[:64]
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        identity = await self.flow.password(password)
        if identity is None:
            return False
        if not await self._route_allowed("password"):
            return False
        await self.flow.succeeded(self.route.target or "" if self.route else "")
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fingerprint = key.get_fingerprint("sha256")
        if not await self.flow.public_key_acceptable(fingerprint):
            return False
        # The same key is checked again with its signature; decide the route once per key.
        if self._pending_key == fingerprint:
            return True
        if not await self._route_allowed("publickey", prospective=True):
            return False
        self._pending_key = fingerprint
        return True

    async def auth_completed(self) -> None:
        if self.flow.identity is None and self._pending_key is not None:
            await self.flow.public_key_verified(self._pending_key)
            await self._route_allowed("publickey")
            await self.flow.succeeded(self.route.target or "" if self.route else "")
        self.peer.authenticated()
        self.auth_ready.set()

    async def _route_allowed(self, method: str, prospective: bool = False) -> bool:
        """When the login names a target, it must be one this user may use now; else the login fails.

        Unknown user, unknown target and forbidden target therefore all look the same to the client.
        """
        assert self.route is not None
        if self.route.target is None:
            return True
        identity = self.flow.identity
        if prospective or identity is None:
            user = self.flow.user
            assert user is not None
            identity = Identity(user.id, user.name, user.roles, user.groups, 1, (method,), self.peer.addr,
                                self.peer.port)
        decision = await self.services.policy.authorize_target(identity, self.route.target, self.route.account,
                                                              self.services.clock.now())
        if isinstance(decision, Allow):
            if not prospective:
                self.authorization = decision.authorization
            return True
        if isinstance(decision, Deny) and decision.ambiguous_accounts:
            self.ambiguous_accounts = decision.ambiguous_accounts
            return True
        reason = decision.reason if isinstance(decision, Deny) else f"level {decision.level} required"
        if isinstance(decision, StepUp):
            # Second factors arrive with multi-level admission; until then a higher demand is refused.
            reason = f"target demands level {decision.level}"
        self.flow.identity = None
        await self.flow.refused_after_credentials(method, reason, self.route.target)
        return False

    # channels --------------------------------------------------------------------------------------------

    def session_requested(self) -> asyncssh.SSHServerSession:
        from bastion.ssh.channel import GatewaySession
        return GatewaySession(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        from bastion.ssh.forward import forward_session
        return forward_session(self, dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self._audit_forward_denied("remote", listen_host, listen_port)
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        self._audit_forward_denied("unix", dest_path, 0)
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        self._audit_forward_denied("unix-remote", listen_path, 0)
        return False

    def _audit_forward_denied(self, kind: str, host: str, port: int) -> None:
        identity = self.flow.identity
        event = ForwardDenied(actor=identity.name if identity else "", source=self.peer.addr,
                              target=self.route.target or "" if self.route else "", kind=kind,
                              dest_host=host[:255], dest_port=port)
        task = asyncio.get_running_loop().create_task(self.services.audit.emit(event))
        self.channels.add(task)
        task.add_done_callback(self.channels.discard)

    # upstream --------------------------------------------------------------------------------------------

    async def upstream(self, authorization: TargetAuthorization, session_id: str) -> asyncssh.SSHClientConnection:
        """One upstream connection per target account, shared by this client's channels."""
        key = (authorization.target.id, authorization.account.id)
        async with self._upstream_lock:
            conn = self._upstreams.get(key)
            if conn is not None and not conn.is_closed():
                return conn
            conn = await self.services.upstream.connect(authorization, session_id)
            self._upstreams[key] = conn
            return conn

    def identity_or_fail(self):
        if self.flow.identity is None:
            raise UpstreamError("not authenticated")
        return self.flow.identity
