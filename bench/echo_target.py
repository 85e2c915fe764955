"""A light SSH echo server on loopback: a stand-in target for a thousand sessions (one sshd each would
measure sshd, not the gateway). Any public key is accepted; every session echoes what it receives.

It runs on uvloop with the gateway's asyncssh fast path (bastion/ssh/asyncssh_fastpath.py), as the
load client does: on 2 cores every CPU cycle the measuring apparatus spends is taken from the gateway
it measures, and OpenSSH's sshd, which this stands in for, pads no packet with an ignore message
either.

Every new session freezes what the process holds (gc.freeze), so that a full collection over a
thousand connections does not stall every echo for 0.1 s (see bench/concurrency.py); `--stock` leaves
the collector as it is.

Run: `python -m bench.echo_target HOST_KEY_FILE [--stock]` — prints the port on stdout, serves until killed.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

import asyncssh
import uvloop

from bastion.ssh import asyncssh_fastpath


class _Echo(asyncssh.SSHServerSession):
    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        return True

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._chan.write(data)

    def eof_received(self) -> bool:
        self._chan.exit(0)
        return False


FREEZE_GC = False


class _AnyKey(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True

    def session_requested(self) -> _Echo:
        if FREEZE_GC:
            gc.freeze()  # the connections so far are never walked again
        return _Echo()


async def serve(host_key: str) -> None:
    server = await asyncssh.create_server(_AnyKey, "127.0.0.1", 0, server_host_keys=[host_key],
                                          line_editor=False, encoding=None, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if "--stock" in sys.argv[2:]:  # plain asyncio and stock asyncssh (bench.concurrency --stock-apparatus)
        asyncio.run(serve(sys.argv[1]))
    else:
        asyncssh_fastpath.install()
        FREEZE_GC = True
        uvloop.run(serve(sys.argv[1]))
