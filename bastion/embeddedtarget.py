"""A small SSH server that runs commands as the current user: the demo target when sshd is missing."""

from __future__ import annotations

import asyncio
import os
import pty
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from bastion.ssh_algorithms import server_algorithm_options


async def _run_process(process: asyncssh.SSHServerProcess) -> None:
    command = process.command or os.environ.get("SHELL", "/bin/sh")
    argv = ["/bin/sh", "-c", command] if process.command else [command, "-i"]
    env = {**os.environ, "TERM": process.term_type or "dumb"}
    if process.term_type:
        master, slave = pty.openpty()
        child = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                                     start_new_session=True)
        os.close(slave)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", 0))

        async def pump_in() -> None:
            async for data in process.stdin:
                os.write(master, data)

        async def pump_out() -> None:
            while data := await reader.read(65536):
                process.stdout.write(data)

        inbound = asyncio.create_task(pump_in())
        outbound = asyncio.create_task(pump_out())
        status = await child.wait()
        await asyncio.wait([outbound], timeout=1)
        inbound.cancel()
        outbound.cancel()
    else:
        child = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                     stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.PIPE, env=env)
        await process.redirect(stdin=child.stdin, stdout=child.stdout, stderr=child.stderr)
        status = await child.wait()
        await process.stdout.drain()
    process.exit(status if status >= 0 else 128 - status)


@dataclass
class EmbeddedTarget:
    """asyncssh server on loopback that accepts only the keys the demo authorises."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = 0
    host_key: str = ""
    _keys: list[str] = field(default_factory=list)
    _server: asyncssh.SSHAcceptor | None = None

    @classmethod
    async def start(cls, directory: Path) -> "EmbeddedTarget":
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "embedded_host_key"
        if not key_path.exists():
            key_path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
            os.chmod(key_path, 0o600)
        key = asyncssh.read_private_key(str(key_path))
        target = cls(directory, host_key=key.export_public_key().decode())
        auth_path = directory / "authorized_keys"
        auth_path.touch()
        target._server = await asyncssh.listen(
            target.host, 0, server_host_keys=[key], authorized_client_keys=str(auth_path),
            process_factory=_run_process, encoding=None, password_auth=False, kbdint_auth=False,
            **server_algorithm_options())
        target.port = target._server.sockets[0].getsockname()[1]
        return target

    def authorize(self, public_key: str) -> None:
        with open(self.directory / "authorized_keys", "a", encoding="ascii") as handle:
            handle.write(public_key.strip() + "\n")

    def reload_keys(self) -> None:
        if self._server is not None:
            self._server.update(authorized_client_keys=str(self.directory / "authorized_keys"))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
