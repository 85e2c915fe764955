"""Runs the asyncssh server on sockets the listener hands over."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

import asyncssh

from bastion import __version__
from bastion.keys import load_host_keys
from bastion.ssh import asyncssh_fastpath, asyncssh_hooks
from bastion.ssh.server import GatewayServer
from bastion.ssh_algorithms import server_algorithm_options

if TYPE_CHECKING:
    from bastion.listener import Peer
    from bastion.services import Services

log = logging.getLogger("bastion.ssh")


class SSHFrontEnd:
    """Accepts SSH connections: authentication, then channels bridged to targets."""

    def __init__(self, services: "Services"):
        asyncssh_hooks.install()
        asyncssh_fastpath.install()
        self.services = services
        config = services.config
        keys = load_host_keys(config.keys_dir)
        self._options = asyncssh.SSHServerConnectionOptions(
            server_host_keys=[k for k in keys if k.get_algorithm() == "ssh-ed25519"],
            server_version=f"Bastion_{__version__}",
            login_timeout=config["ssh.login_timeout"], keepalive_interval=config["ssh.keepalive_interval"],
            rekey_bytes=config["ssh.rekey_bytes"], rekey_seconds=config["ssh.rekey_seconds"],
            window=config["ssh.window"], encoding=None, line_editor=False, allow_pty=True,
            agent_forwarding=False, x11_forwarding=False, kbdint_auth=True, gss_auth=False, gss_kex=False,
            host_based_auth=False, rdns_lookup=False, allow_scp=False,
            **server_algorithm_options(config["ssh.post_quantum_only"], config["ssh.ciphers"]))

    async def handle(self, sock: socket.socket, peer: "Peer") -> None:
        """Serve one client until it disconnects."""
        try:
            conn = await asyncssh.run_server(sock, options=self._options,
                                             server_factory=lambda: GatewayServer(self.services, peer, self))
        except asyncio.CancelledError:
            raise
        except (asyncssh.Error, OSError, asyncio.TimeoutError, TimeoutError, ConnectionError) as exc:
            log.debug("ssh connection from %s ended before login: %s", peer.addr, type(exc).__name__)
            peer.closed()
            return
        try:
            await conn.wait_closed()
        finally:
            peer.closed()

    async def run_inner(self, sock: socket.socket, outer: "Peer", identity: Any, target: str,
                        peer_mac: str | None, outer_connection_id: str) -> asyncssh.SSHServerConnection:
        """The inner SSH connection of a ProxyJump hop (bastion.ssh.jump), on one end of a socket pair."""
        from bastion.listener import Peer
        from bastion.ssh.jump import INNER_LOGIN_TIMEOUT, JumpServer

        # No slot of the unauthenticated cap: the hop's own cap (jump.MAX_HOPS per outer connection) and a
        # short login timeout bound what a login can hold open.
        peer = Peer(outer.addr, outer.port, outer.via_proxy)
        options = asyncssh.SSHServerConnectionOptions(options=self._options, login_timeout=INNER_LOGIN_TIMEOUT)
        return await asyncssh.run_server(sock, options=options, server_factory=lambda: JumpServer(
            self.services, peer, self, identity, target, peer_mac, outer_connection_id))
