"""Testbed fixtures shared by integration and browser tests: a real sshd target and the gateway per backend."""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from urllib.parse import parse_qs, urlparse

import pytest

from bastion.datadir import init_data_dir
from bastion.localsshd import LocalSshd, find_sshd
from tests.support.clients import Login
from tests.support.gateway import Directory, GatewayProcess

UNPRIVILEGED = "bastiontest"
_names = itertools.count(1)


def _ensure_unprivileged_account() -> str | None:
    """A non-root login on this machine (OpenSSH refuses SSH signals for root sessions)."""
    try:
        pwd.getpwnam(UNPRIVILEGED)
        return UNPRIVILEGED
    except KeyError:
        pass
    if os.geteuid() != 0:
        return None
    subprocess.run(["useradd", "--no-create-home", "--home-dir", "/tmp", "--shell", "/bin/sh", UNPRIVILEGED],
                   check=True, capture_output=True)
    # sshd without PAM refuses locked accounts ('!'); '*' means "no password" but not locked.
    subprocess.run(["usermod", "-p", "*", UNPRIVILEGED], check=True, capture_output=True)
    return UNPRIVILEGED


@pytest.fixture(scope="session")
def target_sshd():
    if find_sshd() is None:
        pytest.skip("openssh-server is not installed (make test installs it)")
    directory = Path(tempfile.mkdtemp(prefix="bastion-sshd-"))
    sshd = LocalSshd(directory, extra_config=["AcceptEnv FOO"]).start()
    yield sshd
    sshd.stop()


@pytest.fixture(scope="session")
def keys_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="bastion-keys-"))
    path.chmod(0o700)
    return path


def make_key(directory: Path, name: str, kind: str = "ed25519") -> Path:
    path = directory / name
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(path)], check=True)
    return path


@dataclass
class Testbed:
    backend: str
    data_dir: Path
    gateway: GatewayProcess
    directory: Directory
    sshd: LocalSshd
    keys_dir: Path
    accounts: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.gateway.port

    def admin(self):
        return self.directory.admin()

    def user(self, actions: str | None = "shell,exec", account: str = "root", key: bool = False,
             target: str = "web01", until: str | None = None, prefix: str = "u", totp: bool = False,
             min_level: int | None = None, roles: tuple[str, ...] = ("user",)) -> Login:
        """A fresh user with a password (a key, a TOTP secret if asked), granted `actions` on target/account."""
        name = f"{prefix}{next(_names)}{self.backend[:2]}"
        password = f"correct-horse-{name}-battery"
        key_path = make_key(self.keys_dir, f"id_{name}") if key else None
        keys = [key_path.with_suffix(".pub").read_text()] if key_path else []
        self.admin().add_user(name, password=password, ssh_keys=keys, roles=roles)
        secret = None
        if totp:
            uri = self.admin().enroll_totp(name, "Bastion")["uri"]
            secret = parse_qs(urlparse(uri).query)["secret"][0]
        if actions:
            self.admin().add_grant(user=name, target=target, account=account, actions=actions.split(","),
                                   until=until, min_level=min_level)
        return Login(name, password=password, key=key_path, totp_secret=secret)

    def target(self, prefix: str, min_level: int | None = None, device_policy: str | None = None) -> str:
        """A new target name for the same sshd, with its own level and device policy (account root)."""
        name = f"{prefix}-{next(_names)}{self.backend[:2]}"
        self.admin().add_target(name, self.sshd.host, self.sshd.port, self.sshd.host_key_pub.read_text(),
                                min_level=min_level, device_policy=device_policy)
        self.sshd.authorize("root", self.admin().add_account(name, "root", generate=True)["public_key"])
        return name


@pytest.fixture(scope="session")
def testbed(backend, target_sshd, keys_dir, tmp_path_factory, request):
    url = "" if backend == "sqlite" else request.getfixturevalue("pg_database")
    data_dir = tmp_path_factory.mktemp(f"gateway-{backend}") / "data"
    asyncio.run(init_data_dir(data_dir, listen="127.0.0.1:0", database_url=url))
    directory = Directory(data_dir)
    admin = directory.admin()
    admin.add_target("web01", target_sshd.host, target_sshd.port, target_sshd.host_key_pub.read_text())
    accounts = ["root"]
    unprivileged = _ensure_unprivileged_account()
    if unprivileged:
        accounts.append(unprivileged)
    for login in accounts:
        public = admin.add_account("web01", login, generate=True)["public_key"]
        target_sshd.authorize(login, public)
    # Every test client comes from 127.0.0.1: the per-source limit is tested on its own gateway.
    gateway = GatewayProcess(data_dir, env={"BASTION_POLICY_RECHECK_INTERVAL": "0.5",
                                            "BASTION_AUTH_RATE_LIMIT_FAILURES": "100000"}).start()
    bed = Testbed(backend, data_dir, gateway, directory, target_sshd, keys_dir, accounts)
    yield bed
    gateway.stop()
    directory.close()
