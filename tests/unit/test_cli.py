"""The `bastion` command line: the contract's commands, and garbage flags that change nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest


def run(data_dir: Path | None, *args: str, input: str | None = None, env: dict | None = None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    environ.update(env or {})
    if data_dir is not None:
        environ["BASTION_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, input=input,
                          env=environ, timeout=60)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "data"
    result = run(None, "init", "--data-dir", str(path), "--listen", "127.0.0.1:0")
    assert result.returncode == 0, result.stderr
    return path


TABLES = ("users", "credentials", "targets", "target_accounts", "grants", "sessions", "recordings", "audit_events")


def snapshot(data_dir: Path) -> dict:
    """Everything a command could change: the files (but the database's own) and every table's rows."""
    files = {str(p): p.stat().st_mtime_ns for p in data_dir.rglob("*")
             if p.is_file() and not p.name.startswith("bastion.db")}
    with sqlite3.connect(data_dir / "bastion.db") as db:
        rows = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in TABLES}
    return {"files": files, "rows": rows}


def test_init_creates_private_material_and_refuses_to_overwrite(data_dir):
    keys = data_dir / "keys"
    for name in ("master.key", "ssh_host_ed25519_key", "ssh_host_ecdsa_key", "tls.key", "node_ed25519.pem"):
        assert (keys / name).stat().st_mode & 0o077 == 0, name
    assert (data_dir / "bastion.toml").exists() and (keys / "tls.crt").exists()
    before = snapshot(data_dir)
    again = run(None, "init", "--data-dir", str(data_dir))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert snapshot(data_dir) == before


def test_contract_commands_work_and_list_as_json(data_dir, tmp_path):
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "user.pub").write_bytes(key.export_public_key())
    host = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "host.pub").write_bytes(host.export_public_key())
    assert run(data_dir, "user", "add", "carol", "--role", "user", "--role", "auditor", "--password-stdin",
               "--ssh-key", str(tmp_path / "user.pub"), input="carols-long-password\n").returncode == 0
    assert run(data_dir, "target", "add", "db01", "--host", "127.0.0.1", "--port", "2222", "--host-key",
               str(tmp_path / "host.pub"), "--min-level", "1").returncode == 0
    generated = run(data_dir, "target", "account", "add", "db01", "postgres", "--generate")
    assert generated.returncode == 0 and "ssh-ed25519 " in generated.stdout and "PRIVATE" not in generated.stdout
    assert run(data_dir, "grant", "add", "--user", "carol", "--target", "db01", "--account", "postgres",
               "--actions", "shell,sftp-read", "--until", "2099-01-01T00:00:00Z").returncode == 0
    users = json.loads(run(data_dir, "user", "list", "--json").stdout)
    carol = next(u for u in users if u["name"] == "carol")
    assert carol["roles"] == ["auditor", "user"] and sorted(carol["credentials"]) == ["password", "ssh_key"]
    grants = json.loads(run(data_dir, "grant", "list", "--json").stdout)
    assert any(g["subject"] == "user:carol" and g["actions"] == ["sftp-read", "shell"] for g in grants)
    assert json.loads(run(data_dir, "sessions", "list", "--json").stdout) == []
    assert run(data_dir, "user", "disable", "carol").returncode == 0
    assert json.loads(run(data_dir, "audit", "verify", "--json").stdout)["ok"] is True


@pytest.mark.parametrize("args, fragment", [
    (["frobnicate"], "invalid choice"),
    (["user", "add"], "required"),
    (["user", "add", "Bad Name"], "invalid user name"),
    (["user", "add", "eve", "--role", "root"], "invalid choice"),
    (["user", "add", "eve", "--ssh-key", "/nonexistent/key.pub"], "cannot read"),
    (["user", "add", "eve", "--password-stdin"], "no password"),
    (["target", "add", "t1", "--host", "127.0.0.1", "--port", "99999", "--host-key", "/etc/hostname"], "port"),
    (["target", "add", "t1", "--host", "127.0.0.1", "--port", "22"], "required"),
    (["target", "add", "t1", "--host", "127.0.0.1", "--port", "22", "--host-key", "/etc/hostname"], "not an SSH"),
    (["target", "add", "t1", "--host", "127.0.0.1", "--port", "22", "--scan", "--host-key", "x"], "not allowed"),
    (["target", "account", "add", "nosuch", "root", "--generate"], "no such target"),
    (["target", "account", "add", "db01", "root", "--generate", "--password-stdin"], "not allowed"),
    (["grant", "add", "--user", "carol", "--target", "db01", "--account", "postgres", "--actions", "rm"],
     "unknown action"),
    (["grant", "add", "--user", "carol", "--target", "db01", "--account", "postgres", "--until", "soon"],
     "ISO 8601"),
    (["grant", "add", "--user", "carol", "--group", "ops", "--target", "db01", "--account", "x"], "not allowed"),
    (["grant", "revoke", "abc"], "invalid int"),
    (["grant", "revoke", "424242"], "no such grant"),
    (["recording", "export", "no-such-session", "-o", "/tmp/x.cast"], "no recording"),
    (["replay", "x", "--speed", "-1"], "speed"),
    (["grant", "add", "--min-level", "7", "--user", "u", "--target", "t", "--account", "a"], "1, 2 or 3"),
    (["user", "totp", "enroll", "nobody"], "no such user"),
    (["user", "totp", "reset", "carol"], "no TOTP"),
    (["user", "unlock", "nobody"], "no such user"),
    (["user", "set", "carol", "--device-policy", "maybe"], "invalid choice"),
    (["user", "key", "add", "carol", "/etc/hostname"], "not an OpenSSH public key"),
    (["device", "add", "carol", "laptop"], "at least one of"),
    (["device", "add", "carol", "laptop", "--mac", "zz:zz"], "not a MAC"),
    (["device", "add", "carol", "laptop", "--mac", "01:00:5e:00:00:01"], "unicast"),
    (["device", "add", "carol", "bad name", "--mac", "02:00:00:00:00:01"], "invalid device name"),
    (["device", "add", "nobody", "laptop", "--mac", "02:00:00:00:00:01"], "no such user"),
    (["device", "approve", "4242"], "no such device"),
    (["device", "revoke", "x"], "invalid int"),
    (["group", "set", "Bad Group", "--device-policy", "off"], "invalid group name"),
    (["target", "set", "nosuch", "--min-level", "2"], "no such target"),
    (["target", "set", "db01"], "give --min-level"),
])
def test_garbage_flags_give_one_clear_line_and_change_nothing(data_dir, args, fragment):
    before = snapshot(data_dir)
    result = run(data_dir, *args, input="")
    assert result.returncode in (1, 2)
    assert fragment in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") <= 2 and "Traceback" not in result.stderr
    assert snapshot(data_dir) == before


def test_missing_or_foreign_data_dir_is_a_usage_error(tmp_path):
    result = run(None, "user", "list")
    assert result.returncode == 2 and "BASTION_DATA_DIR" in result.stderr
    result = run(tmp_path, "user", "list")
    assert result.returncode == 2 and "not a Bastion data directory" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_world_readable_master_key_refuses_to_start(tmp_path):
    data = tmp_path / "data"
    assert run(None, "init", "--data-dir", str(data)).returncode == 0
    (data / "keys" / "master.key").chmod(0o644)
    result = run(data, "serve")
    assert result.returncode == 1 and "master.key" in result.stderr and "chmod 600" in result.stderr
