"""The ways to reach a server that Bastion is measured against, all on loopback in one run.

1. direct: OpenSSH `ssh` → the target `sshd`.
2. proxyjump: OpenSSH through a second `sshd` used as a classic jump host (`-J`, no recording).
3. asciinema-jump: a home-made recording jump host: an `sshd` whose ForceCommand runs
   `asciinema rec -c "ssh target ..."`, as many teams do today.
4. bastion: the gateway, recording on.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.localsshd import LocalSshd

SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
BENCH_CIPHER = "aes128-gcm@openssh.com"


@dataclass
class Peer:
    """One way in: how the OpenSSH client and asyncssh reach the target through it."""

    name: str
    port: int
    login: str
    key: Path
    jump: tuple[int, str] | None = None   # (port, login) of a jump host the client goes through
    tty: bool = False                      # force a terminal (asciinema relays output only to one)
    scp: bool = True                       # can it carry scp/sftp at all?
    cipher: str | None = BENCH_CIPHER      # None: the client's own choice (stock OpenSSH: chacha20-poly1305)
    notes: list[str] = field(default_factory=list)

    def _opts(self) -> list[str]:
        return [*SSH_OPTS, *(["-c", self.cipher] if self.cipher else [])]

    def _jump_options(self) -> list[str]:
        if self.jump is None:
            return []
        # ProxyCommand with the same options as the final hop: what -J does, with the options passed on.
        inner = ["ssh", *self._opts(), "-i", str(self.key), "-p", str(self.jump[0]), "-W", "%h:%p",
                 f"{self.jump[1]}@127.0.0.1"]
        return ["-o", "ProxyCommand=" + " ".join(shlex.quote(part) for part in inner)]

    def ssh_args(self, *command: str) -> list[str]:
        return ["ssh", "-p", str(self.port), *self._opts(), *self._jump_options(), *(["-tt"] if self.tty else []),
                "-i", str(self.key), f"{self.login}@127.0.0.1", *command]

    def scp_args(self, remote_login: str, remote_path: str, local: str) -> list[str]:
        """scp (SFTP protocol, as OpenSSH 9 does by default) of a remote file to `local`."""
        return ["scp", "-q", "-P", str(self.port), *self._opts(), *self._jump_options(), "-i", str(self.key),
                f"{remote_login}@127.0.0.1:{remote_path}", local]

    async def connect(self) -> Any:
        """An asyncssh connection to the target through this peer (tunnelled through the jump host, if any)."""
        import asyncssh

        options: dict[str, Any] = dict(client_keys=[str(self.key)], known_hosts=None, agent_path=None, config=None)
        if self.cipher:
            options["encryption_algs"] = [self.cipher]
        tunnel = None
        if self.jump is not None:
            tunnel = await asyncssh.connect("127.0.0.1", self.jump[0], username=self.jump[1], **options)
        conn = await asyncssh.connect("127.0.0.1", self.port, username=self.login, tunnel=tunnel, **options)
        return conn


def asciinema_binary() -> str | None:
    here = Path(sys.executable).parent / "asciinema"
    return str(here) if here.exists() else shutil.which("asciinema")


def start_recording_jump(work: Path, target: LocalSshd, login: str, key: Path) -> tuple[LocalSshd, Path]:
    """An sshd whose every session runs `asciinema rec` around an ssh to the target; returns it and the
    folder its recordings land in."""
    asciinema = asciinema_binary()
    if asciinema is None:
        raise RuntimeError("asciinema not found (it is in the test extras: make venv)")
    recordings = work / "asciinema-recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    inner = work / "jump-inner.sh"
    ssh = " ".join(shlex.quote(part) for part in ["ssh", *SSH_OPTS, "-c", BENCH_CIPHER, "-i", str(key),
                                                          "-p", str(target.port)])
    # A terminal is passed on only when the user has one; the user's command arrives in SSH_ORIGINAL_COMMAND.
    inner.write_text("#!/bin/sh\n"
                     'if [ -t 0 ]; then T=-tt; else T=-T; fi\n'
                     f'exec {ssh} $T {shlex.quote(login)}@127.0.0.1 "$SSH_ORIGINAL_COMMAND"\n')
    outer = work / "jump-record.sh"
    outer.write_text("#!/bin/sh\n"
                     f'exec {shlex.quote(asciinema)} rec -q --overwrite -c {shlex.quote(str(inner))} '
                     f'{shlex.quote(str(recordings))}/rec-$$.cast\n')
    for script in (inner, outer):
        os.chmod(script, 0o755)
    jump = LocalSshd(work / "sshd-asciinema", extra_config=[f"ForceCommand {outer}"]).start()
    jump.authorize(login, key.with_suffix(".pub").read_text())
    return jump, recordings
