"""Real OpenSSH clients (ssh, scp, sftp) and paramiko, pointed at the gateway."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_ASKPASS_DIR = Path(tempfile.mkdtemp(prefix="bastion-askpass-"))
ASKPASS = _ASKPASS_DIR / "askpass.sh"
ASKPASS.write_text('#!/bin/sh\nprintf "%s\\n" "$BASTION_TEST_PASSWORD"\n')
ASKPASS.chmod(0o700)

COMMON = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
          "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=0"]


@dataclass(frozen=True)
class Login:
    """How a test user proves itself: a password, a private key file, or both."""

    name: str
    password: str | None = None
    key: Path | None = None

    def options(self) -> list[str]:
        if self.key is not None:
            return ["-o", "IdentitiesOnly=yes", "-o", "PreferredAuthentications=publickey", "-i", str(self.key)]
        return ["-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no",
                "-o", "NumberOfPasswordPrompts=1"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        env.update({"SSH_ASKPASS": str(ASKPASS), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0",
                    "BASTION_TEST_PASSWORD": self.password or "", "LANG": "C.UTF-8"})
        return env


def ssh(port: int, login: Login, user_spec: str, *command: str, tty: bool = False, input: bytes | None = None,
        timeout: float = 60, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    args = ["ssh", "-p", str(port), *COMMON, *login.options(), *(extra or [])]
    args += ["-tt"] if tty else ["-T"]
    args += [f"{user_spec}@127.0.0.1", *command]
    return subprocess.run(args, input=input or b"", capture_output=True, timeout=timeout, env=login.env(),
                          start_new_session=True)


def scp(port: int, login: Login, *paths: str, timeout: float = 60, legacy: bool = False) -> subprocess.CompletedProcess:
    args = ["scp", "-P", str(port), *COMMON, *login.options(), *(["-O"] if legacy else []), *paths]
    return subprocess.run(args, capture_output=True, timeout=timeout, env=login.env(), stdin=subprocess.DEVNULL,
                          start_new_session=True)


def sftp(port: int, login: Login, user_spec: str, batch: str, timeout: float = 60) -> subprocess.CompletedProcess:
    args = ["sftp", "-P", str(port), *COMMON, *login.options(), "-b", "-", f"{user_spec}@127.0.0.1"]
    return subprocess.run(args, input=batch.encode(), capture_output=True, timeout=timeout, env=login.env(),
                          start_new_session=True)


def paramiko_client(port: int, login: Login, user_spec: str):
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=port, username=user_spec, password=login.password,
                   key_filename=str(login.key) if login.key else None, look_for_keys=False, allow_agent=False,
                   timeout=20, banner_timeout=20, auth_timeout=20)
    return client
