"""Real OpenSSH clients (ssh, scp, sftp) and paramiko, pointed at the gateway."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_ASKPASS_DIR = Path(tempfile.mkdtemp(prefix="bastion-askpass-"))
atexit.register(shutil.rmtree, _ASKPASS_DIR, True)  # one per test process; none left behind
ASKPASS = _ASKPASS_DIR / "askpass.sh"
# OpenSSH asks the askpass program for every prompt, with the prompt as $1: the TOTP prompt gets a
# code (fixed, or computed now from the secret), everything else the password.
ASKPASS.write_text(f"""#!/bin/sh
case "$1" in
  *erification*)
    if [ -n "$BASTION_TEST_TOTP_CODE" ]; then printf '%s\\n' "$BASTION_TEST_TOTP_CODE"; exit 0; fi
    exec {sys.executable} -c 'import os, pyotp; print(pyotp.TOTP(os.environ["BASTION_TEST_TOTP_SECRET"]).now())' ;;
  *PIN*) printf '%s\\n' "$BASTION_TEST_SK_PIN" ;;
  *) printf '%s\\n' "$BASTION_TEST_PASSWORD" ;;
esac
""")
ASKPASS.chmod(0o700)

COMMON = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
          "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=0"]


@dataclass(frozen=True)
class Login:
    """How a test user proves itself: a password, a private key file, or both."""

    name: str
    password: str | None = None
    key: Path | None = None
    totp_secret: str | None = None
    totp_code: str | None = None
    keys: tuple[Path, ...] = ()             # further keys offered after `key` (e.g. a FIDO2 key)
    sk_provider: Path | None = None
    extra_env: tuple[tuple[str, str], ...] = ()

    def options(self) -> list[str]:
        if self.key is not None:
            methods = "publickey,keyboard-interactive,password" if (self.totp_secret or self.totp_code
                                                                    or self.password) else "publickey"
            opts = ["-o", "IdentitiesOnly=yes", "-o", f"PreferredAuthentications={methods}", "-i", str(self.key)]
            for extra in self.keys:
                opts += ["-i", str(extra)]
            if self.sk_provider is not None:
                opts += ["-o", f"SecurityKeyProvider={self.sk_provider}"]
            return opts + ["-o", "NumberOfPasswordPrompts=1"]
        return ["-o", "PreferredAuthentications=password,keyboard-interactive,publickey",
                "-o", "PubkeyAuthentication=" + ("yes" if self.keys else "no"),
                *[arg for extra in self.keys for arg in ("-i", str(extra))],
                *(["-o", f"SecurityKeyProvider={self.sk_provider}", "-o", "IdentitiesOnly=yes"]
                  if self.sk_provider else []),
                "-o", "NumberOfPasswordPrompts=1"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "BASTION_SOFTSK_"))}
        env.update({"SSH_ASKPASS": str(ASKPASS), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0",
                    "BASTION_TEST_PASSWORD": self.password or "", "LANG": "C.UTF-8",
                    "BASTION_TEST_TOTP_SECRET": self.totp_secret or "", "BASTION_TEST_TOTP_CODE": self.totp_code or ""})
        env.update(dict(self.extra_env))
        return env


def ssh(port: int, login: Login, user_spec: str, *command: str, tty: bool = False, input: bytes | None = None,
        timeout: float = 60, extra: list[str] | None = None, host: str = "127.0.0.1",
        prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    # `extra` goes first: for -o options ssh keeps the first value it is given
    args = [*(prefix or []), "ssh", "-p", str(port), *(extra or []), *COMMON, *login.options()]
    args += ["-tt"] if tty else ["-T"]
    args += [f"{user_spec}@{host}", *command]
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


def read_until(chan, marker: bytes, timeout: float = 20) -> bytes:
    """Read a paramiko channel until `marker` shows (asserting that it does); returns all that was read."""
    data, deadline = b"", time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        if chan.recv_ready():
            data += chan.recv(65536)
        else:
            time.sleep(0.02)
    assert marker in data, data[-500:]
    return data
