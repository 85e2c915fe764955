"""The asyncssh server: multi-factor authentication in sequence, and per-connection state for one client."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.public_key import decode_ssh_public_key

from bastion.audit.events import ForwardDenied
from bastion.auth import levels
from bastion.auth.flow import AuthFlow, Verdict
from bastion.auth.neighbours import peer_mac
from bastion.auth.skkeys import SK_ALGORITHMS, parse_sk_signature
from bastion.errors import UpstreamError
from bastion.policy import DEVICE_REQUIRED, Allow, StepUp, TargetAuthorization
from bastion.ssh.datasets import DATASETS_LOGIN, ONLY_SFTP, DatasetsSession, login_level
from bastion.ssh.routing import Route, parse_login

if TYPE_CHECKING:
    from bastion.listener import Peer
    from bastion.services import Services

log = logging.getLogger("bastion.ssh")
# No user can have this name (see admin.USER_NAME); no NUL either, which PostgreSQL refuses in text.
INVALID_LOGIN = "!invalid login"
MAX_REJECTIONS = 10

OFFER_TEXT = {levels.TOTP: "a TOTP code (keyboard-interactive)",
              levels.SK: "a FIDO2 security key (touch it)",
              levels.SK_VERIFIED: "a FIDO2 security key with user verification (fingerprint or PIN)",
              "browser": "an approval in the web console with your security key (keyboard-interactive)"}


class GatewayServer(asyncssh.SSHServer):
    """One client connection: who it is, where it goes, and its upstream connections."""

    hops = 0  # ProxyJump hops open through this connection now

    def __init__(self, services: "Services", peer: "Peer", frontend: Any):
        self.services = services
        self.peer = peer
        self.frontend = frontend  # runs the inner connection of a ProxyJump hop
        self.connection_id = str(uuid.uuid4())
        self.conn: asyncssh.SSHServerConnection | None = None
        self.route: Route | None = None
        self.flow = AuthFlow(services.authenticator, peer.addr, peer.port)
        self.authorization: TargetAuthorization | None = None
        self.device_policy = "off"  # of the `datasets` login, decided with its identity
        self.ambiguous_accounts: tuple[str, ...] = ()
        self._partial = False
        self._approval: str | None = None
        self._rejections = 0
        self._banners: set[str] = set()
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

    # methods offered -------------------------------------------------------------------------------------
    # asyncssh asks these before every answer, so the client is offered exactly what is still needed.

    def password_auth_supported(self) -> bool:
        return self.flow.wants() == "first"

    def public_key_auth_supported(self) -> bool:
        return self.flow.wants() == "first" or bool(self.flow.can_offer() & {levels.SK, levels.SK_VERIFIED})

    def kbdint_auth_supported(self) -> bool:
        offers = self.flow.can_offer()
        return self.flow.wants() != "first" and (levels.TOTP in offers or self._browser_possible(offers))

    def _browser_possible(self, offers: set[str]) -> bool:
        """A console security key can approve this login (needs the console's address to link to)."""
        return bool(self.services.public_url) and bool(offers & {levels.WEBAUTHN, levels.WEBAUTHN_VERIFIED})

    def take_partial_success(self) -> bool:
        partial, self._partial = self._partial, False
        return partial

    # paramiko asks for the userauth service again before each method (see asyncssh_hooks).
    accepts_repeated_userauth_service = True

    # factors ---------------------------------------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        # asyncssh calls this again when the client changes the user name: start from nothing.
        self.authorization = None
        self.ambiguous_accounts = ()
        self._partial = False
        self.route = parse_login(username)
        # The MAC is only meaningful for a peer on our own segment, never behind a load balancer.
        mac = None if self.peer.via_proxy else await peer_mac(self.peer.addr)
        self.flow = AuthFlow(self.services.authenticator, self.peer.addr, self.peer.port, mac)
        # An unparseable name is handled exactly like an unknown user: same methods, same cost, same failure.
        await self.flow.start(self.route.user if self.route else INVALID_LOGIN)
        self.flow.login_name = self.route.user if self.route else username[:64]
        self.flow.target = (self.route.target or "") if self.route else ""
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        verdict = await self.flow.password(password)
        if verdict is not Verdict.ACCEPTED:
            return self._rejected()
        return await self._after_factor(levels.PASSWORD)

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Is this key registered and useful now? Only that: an unsigned query proves nothing, so the
        route is decided after the signature (else a published public key would reveal grants)."""
        if not await self.flow.key_acceptable(key.get_fingerprint("sha256")):
            return self._rejected()
        return True

    def _rejected(self) -> bool:
        """Count a refused request; past the cap the connection is dropped (as MaxAuthTries does)."""
        self._rejections += 1
        if self._rejections >= MAX_REJECTIONS and self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures")
        return False

    async def public_key_signature_verified(self, key_data: bytes, signature: bytes) -> bool:
        """asyncssh verified a signature by an acceptable key (see asyncssh_hooks)."""
        try:
            key = decode_ssh_public_key(key_data)
        except (asyncssh.KeyImportError, ValueError):
            return False
        assertion = None
        if key.get_algorithm() in SK_ALGORITHMS:
            try:
                assertion = parse_sk_signature(signature)
            except ValueError:
                assertion = None
        if await self.flow.key_signed(key.get_fingerprint("sha256"), assertion) is not Verdict.ACCEPTED:
            return self._rejected()
        return await self._after_factor(self.flow.factors[-1])

    async def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        offers = self.flow.can_offer()
        self._approval = None
        if levels.TOTP in offers:
            instruction = f"Level {self.flow.required_level} is needed: enter the code from your authenticator app."
            return "Bastion verification", instruction, "en-US", [("Verification code: ", False)]
        if not self._browser_possible(offers) or self.flow.user is None:
            return False
        target = self.route.target if self.route and self.route.target else ""
        token = await self.services.approvals.create(self.flow.user.id, self.connection_id, target,
                                                     self.flow.required_level)
        self._approval = token
        seconds = int(self.services.approvals.lifetime.total_seconds())
        instruction = (f"Level {self.flow.required_level} is needed. Approve this login with your security key "
                       f"in the browser:\n\n  {self.services.public_url}/approve/{token}\n\n"
                       f"The link works once, for this login, for {seconds} seconds.")
        return "Bastion approval", instruction, "en-US", [("Press Enter once approved: ", True)]

    async def validate_kbdint_response(self, username: str, responses: list[str]) -> bool:
        if self._approval is not None:
            token, self._approval = self._approval, None
            method = await self.services.approvals.wait(token, self.connection_id,
                                                        self.services.approvals.lifetime.total_seconds())
            if method is None or await self.flow.approved_in_browser(method) is not Verdict.ACCEPTED:
                await self.flow.refused_after_credentials("browser-approval", "not approved in time")
                return self._rejected()
            return await self._after_factor(method)
        if len(responses) != 1 or await self.flow.totp(responses[0]) is not Verdict.ACCEPTED:
            return self._rejected()
        return await self._after_factor(levels.TOTP)

    # sequencing ------------------------------------------------------------------------------------------

    async def _decide(self, identity):
        assert self.route is not None and self.route.target is not None
        return await self.services.policy.authorize_target(identity, self.route.target, self.route.account,
                                                           self.services.clock.now())

    @property
    def datasets_login(self) -> bool:
        """`alice#datasets`: the gateway's own read-only SFTP view of published datasets, not a target."""
        return self.route is not None and self.route.target == DATASETS_LOGIN

    def _reachable(self, level: int) -> bool:
        """Could this user give, over SSH, the factors `level` needs (without demanding it yet)?"""
        before = self.flow.required_level
        try:
            self.flow.demand(level)
            offers = self.flow.can_offer()
            return self.flow.complete or bool(offers & set(OFFER_TEXT)) or self._browser_possible(offers)
        finally:
            self.flow.required_level = before

    async def _after_dataset_factor(self, method: str) -> bool:
        assert self.route is not None
        if self.route.account is not None:
            return await self._refuse(method, "no such target")
        identity = self.flow.identity
        # As for targets: a missing device refuses before any further factor is asked for.
        self.device_policy = await self.services.policy.device_policy(identity)
        if self.device_policy == "required" and identity.device_id is None:
            self._banner(f"bastion: {DEVICE_REQUIRED}\r\n")
            return await self._refuse(method, "no approved device")
        self.flow.demand(await login_level(self.services, identity, self._reachable))
        if not self.flow.complete:
            return await self._ask_more(method)
        await self.flow.succeeded()
        return True

    async def _after_factor(self, method: str) -> bool:
        """A factor was accepted: finish the login, ask for the next factor, or refuse."""
        if self.datasets_login:
            return await self._after_dataset_factor(method)
        if self.route is not None and self.route.target is not None:
            decision = await self._decide(self.flow.identity)
            if isinstance(decision, Allow):
                self.authorization = decision.authorization
            elif isinstance(decision, StepUp):
                self.flow.demand(decision.level)
            elif decision.ambiguous_accounts:
                self.ambiguous_accounts = decision.ambiguous_accounts
            else:
                if decision.user_message:
                    self._banner(f"bastion: {decision.user_message}\r\n")
                return await self._refuse(method, decision.reason)
        if self.flow.complete:
            if self.authorization is None and self.route is not None and self.route.target is not None \
                    and not self.ambiguous_accounts:
                decision = await self._decide(self.flow.identity)
                if not isinstance(decision, Allow):
                    return await self._refuse(method, "target not allowed at the reached level")
                self.authorization = decision.authorization
            await self.flow.succeeded()
            return True
        return await self._ask_more(method)

    async def _ask_more(self, method: str) -> bool:
        """Below the demanded level: name what can raise it (partial success), or refuse when nothing can."""
        needed = self.flow.required_level
        where = self.route.target if self.route and self.route.target else "this login"
        offers = self.flow.can_offer() & set(OFFER_TEXT)  # what an SSH client can give in-band
        if self._browser_possible(self.flow.can_offer()):
            offers.add("browser")
        if not offers:
            self._banner(f"bastion: {where} needs authentication level {needed}: {levels.NEEDS[needed]}. "
                         "None is enrolled for you or usable from this client; ask an administrator, or "
                         "register a security key in the web console to approve such logins there.\r\n")
            return await self._refuse(method, f"level {needed} needed, no usable factor")
        self._banner(f"bastion: {where} needs authentication level {needed}; continue with "
                     f"{' or '.join(OFFER_TEXT[o] for o in sorted(offers))}.\r\n")
        self._partial = True
        return False

    async def _refuse(self, method: str, reason: str) -> bool:
        await self.flow.refused_after_credentials(method, reason)
        return self._rejected()

    def _banner(self, text: str) -> None:
        if self.conn is not None and text not in self._banners:
            self._banners.add(text)
            try:
                self.conn.send_auth_banner(text)
            except OSError:
                pass

    async def auth_completed(self) -> None:
        self.peer.authenticated()
        self.auth_ready.set()

    # channels --------------------------------------------------------------------------------------------

    def session_requested(self) -> asyncssh.SSHServerSession:
        if self.datasets_login:
            return DatasetsSession(self)
        from bastion.ssh.channel import GatewaySession
        return GatewaySession(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        if self.datasets_login:
            self._audit_forward_denied("local", dest_host, dest_port)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, ONLY_SFTP)
        from bastion.ssh import jump
        from bastion.ssh.forward import forward_session
        if jump.is_jump(dest_host, dest_port):
            return jump.open_jump(self, dest_host, dest_port, lambda: forward_session(self, dest_host, dest_port))
        return forward_session(self, dest_host, dest_port)

    async def serve_inner(self, sock: Any, identity: Any, target: str) -> asyncssh.SSHServerConnection:
        """Run a ProxyJump hop's inner SSH connection on `sock`, bound to this login's identity."""
        return await self.frontend.run_inner(sock, self.peer, identity, target, self.flow.peer_mac, self.connection_id)

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
