"""`bastion demo`: a data dir, a demo target, demo users and grants, then the gateway."""

from __future__ import annotations

import getpass
import json
import os
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable

from bastion.config import load_config
from bastion.datadir import init_data_dir
from bastion.errors import Conflict
from bastion.localsshd import LocalSshd, find_sshd

CREDENTIALS = "demo-credentials.json"
DEMO_USERS = (("alice", ["user"], "shell,exec,sftp-read,sftp-write"), ("bob", ["user"], "shell,sftp-read"),
              ("admin", ["admin"], None), ("auditor", ["auditor"], None))


def _credentials(data_dir: Path) -> dict[str, str]:
    path = data_dir / CREDENTIALS
    if path.exists():
        return json.loads(path.read_text())
    creds = {name: secrets.token_urlsafe(12) for name, _, _ in DEMO_USERS}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(creds, handle)
    return creds


async def _provision(services: Any, target_host: str, target_port: int, host_key: str, login: str,
                     authorize: Callable[[str], None], creds: dict[str, str]) -> None:
    admin = services.admin(actor="demo")
    existing = {t["name"]: t for t in await admin.list_targets()}
    if "web01" in existing:
        await admin.update_target_address("web01", target_host, target_port, host_key)
    else:
        await admin.add_target("web01", target_host, target_port, host_key)
    if not any(a["login"] == login for a in existing.get("web01", {}).get("accounts", [])):
        account = await admin.add_account("web01", login, generate=True)
        authorize(account["public_key"])
    users = {u["name"] for u in await admin.list_users()}
    for name, roles, actions in DEMO_USERS:
        if name in users:
            continue
        await admin.add_user(name, roles=roles, password=creds[name])
        if actions:
            await admin.add_grant(user=name, target="web01", account=login, actions=actions.split(","))


def _demo_customers(path: Path) -> Path:
    """A small CSV of made-up customers whose ID, phone and card numbers are valid in form (so `pii` masks them)."""
    from bastion.publish.masking import id_check_char, luhn_valid

    def card(prefix: str) -> str:
        return next(prefix + f"{n:03d}" + str(c) for n in range(1000) for c in range(10)
                    if luhn_valid(prefix + f"{n:03d}" + str(c)))

    rows = ["name,id_number,mobile,card,city,note"]
    for i, (name, city) in enumerate([("Zhang Wei", "Beijing"), ("Li Na", "Shanghai"), ("Wang Fang", "Shenzhen"),
                                      ("Chen Jie", "Hangzhou"), ("Liu Yang", "Chengdu")]):
        first17 = f"110105198{i}{i + 1:02d}{10 + i:02d}12{i}"  # region, birth date YYYYMMDD, sequence
        rows.append(f"{name},{first17}{id_check_char(first17)},1381234{5670 + i},{card(f'62220215{i}0123')},"
                    f"{city},contact {name.split()[0].lower()}{i}@example.com")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


async def _provision_dataset(services: Any, data_dir: Path) -> None:
    """Dataset `customers`: alice may view it masked (pii), bob may download it."""
    from bastion.publish.catalog import Catalog

    catalog = Catalog.from_services(services, actor="demo")
    if any(d["name"] == "customers" for d in await catalog.list()):
        return
    await catalog.add("customers", _demo_customers(data_dir / "demo-dataset" / "customers.csv"), "internal",
                      "made-up customers for the demo")
    await catalog.publish("customers")
    await catalog.grant("customers", user="alice", mode="view", mask="pii")
    await catalog.grant("customers", user="bob", mode="download", max_downloads=5)


async def run_demo(data_dir: Path, listen: str,
                   serve: Callable[[Any, Callable[[tuple[str, int]], None]], Awaitable[int]]) -> int:
    from bastion.services import Services

    data_dir = data_dir.absolute()
    if not (data_dir / "bastion.toml").exists():
        try:
            await init_data_dir(data_dir, listen=listen)
        except Conflict:
            raise
    config = load_config(data_dir)
    login = getpass.getuser()
    creds = _credentials(data_dir)
    target_dir = data_dir / "demo-target"
    sshd = None
    embedded = None
    if find_sshd():
        sshd = LocalSshd(target_dir).start()
        host, port, host_key = sshd.host, sshd.port, sshd.host_key_pub.read_text()
        authorize = lambda public: sshd.authorize(login, public)  # noqa: E731
    else:
        from bastion.embeddedtarget import EmbeddedTarget

        embedded = await EmbeddedTarget.start(target_dir)
        host, port, host_key = embedded.host, embedded.port, embedded.host_key
        authorize = embedded.authorize
    try:
        services = await Services.open(config)
        try:
            await _provision(services, host, port, host_key, login, authorize, creds)
            await _provision_dataset(services, data_dir)
        finally:
            await services.close()
        if embedded is not None:
            embedded.reload_keys()

        def announce(address: tuple[str, int]) -> None:
            gw_host, gw_port = address
            kind = "OpenSSH sshd" if sshd else "embedded SSH server"
            print(f"""
Bastion demo is running on {gw_host}:{gw_port} (SSH and HTTPS on one port).
Demo target web01 = {kind} on {host}:{port}, account '{login}' (the bastion holds its key).

Users (passwords are also in {data_dir / CREDENTIALS}):
  alice    {creds['alice']}    shell, exec, sftp-read, sftp-write on web01
  bob      {creds['bob']}    shell, sftp-read on web01 (scp uploads are refused)
  admin    {creds['admin']}
  auditor  {creds['auditor']}

Web console: https://localhost:{gw_port}/  (self-signed certificate; use the name localhost, not the IP,
             so security keys work; admin and auditor pages need level 2: enrol TOTP with
             bastion user totp enroll admin)

Try:
  ssh -p {gw_port} alice:web01@{gw_host}               # shell on web01, recorded
  ssh -p {gw_port} alice@{gw_host}                     # menu of alice's targets
  ssh -p {gw_port} alice:web01@{gw_host} uname -a      # exec
  ssh -J alice@{gw_host}:{gw_port} {login}@web01 uname -a   # ProxyJump: the gateway terminates the hop
  scp -P {gw_port} README.md 'alice#web01@{gw_host}:/tmp/'
  export BASTION_DATA_DIR={data_dir}
  bastion sessions list
  bastion recording export SESSION_ID -o s.cast && asciinema play s.cast

Published dataset 'customers': alice views it masked at https://localhost:{gw_port}/datasets,
bob downloads it there or with:  sftp -P {gw_port} 'bob#datasets@{gw_host}'
Stop with Ctrl-C.""", flush=True)

        return await serve(config, announce)
    finally:
        if sshd is not None:
            sshd.stop()
        if embedded is not None:
            await embedded.stop()
