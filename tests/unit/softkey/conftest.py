"""Soft security key fixtures: a tiny asyncssh server that records sk signatures, and the built C provider."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import asyncssh
import pytest

from tests.support.sk_provider import ProviderUnavailable, build
from tests.support.softkey import SignatureLog, capture_sk_signatures

@dataclass
class SkServer:
    """An asyncssh server on 127.0.0.1 that admits the authorized sk keys and records every signature."""

    port: int
    log: SignatureLog
    logins: list[str] = field(default_factory=list)


class _RecordingServer(asyncssh.SSHServer):
    def __init__(self, server: SkServer):
        self._server = server

    def connection_made(self, conn):
        self._conn = conn
        capture_sk_signatures(conn, self._server.log)

    def auth_completed(self):
        self._server.logins.append(self._conn.get_extra_info("username"))


@pytest.fixture
async def sk_server_factory():
    """start(authorized_keys_text) -> SkServer; all servers close at teardown."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    listeners = []

    async def start(authorized_keys: str) -> SkServer:
        server = SkServer(port=0, log=SignatureLog())

        async def session(process):
            process.stdout.write("ok\n")
            process.exit(0)

        listener = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(authorized_keys),
            server_factory=lambda: _RecordingServer(server), process_factory=session,
            password_auth=False, kbdint_auth=False, login_timeout=15)
        listeners.append(listener)
        server.port = listener.sockets[0].getsockname()[1]
        return server

    yield start
    for listener in listeners:
        listener.close()
        await listener.wait_closed()


@pytest.fixture(scope="session")
def softsk_lib(tmp_path_factory):
    """The compiled SecurityKeyProvider; skips (with the reason) where it cannot be built or used."""
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install openssh-client)")
    try:
        return build(tmp_path_factory.mktemp("softsk"))
    except ProviderUnavailable as exc:
        pytest.skip(f"soft security key provider unavailable: {exc}")
