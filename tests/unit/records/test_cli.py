"""The records commands through a real process: audit export/anchor, hold/release/retention, backup/restore."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.clock import FixedClock
from bastion.config import load_config
from bastion.datadir import init_data_dir
from bastion.services import Services

from .conftest import NOW, recorded_session

PASSPHRASE = "a passphrase long enough\n"
# `bastion` with the records commands registered the way bastion/cli.py's build_parser does it.
RUNNER = """
import argparse, sys
from bastion import cli, records_cli
from bastion.errors import BastionError

parser = cli.build_parser()
sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
common = argparse.ArgumentParser(add_help=False)
common.add_argument("--data-dir", default=argparse.SUPPRESS)
listing = argparse.ArgumentParser(add_help=False)
listing.add_argument("--json", action="store_true")

def command(group, name, func, help, *extra):
    p = group.add_parser(name, help=help, description=help, parents=[common, *extra])
    p.set_defaults(func=func)
    return p

records_cli.register_cli(sub, command, listing)
records_cli.register_cli(sub, command, listing)  # idempotent
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.func(args))
except BastionError as exc:
    print(f"bastion: error: {exc.safe_message}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def run(data_dir: Path | None, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    if data_dir is not None:
        environ["BASTION_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, input=input,
                          env=environ, timeout=120, stdin=None if input is not None else subprocess.DEVNULL)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    """A data directory with one recorded session that ended long ago."""
    data_dir = tmp_path_factory.mktemp("records-cli") / "data"

    async def make() -> str:
        await init_data_dir(data_dir, listen="127.0.0.1:0")
        services = await Services.open(load_config(data_dir, environ={}), clock=FixedClock(NOW))
        try:
            session_id, _ = await recorded_session(services, ended_days_ago=4000, text=b"CLI-MARK\r\n")
            return session_id
        finally:
            await services.close()

    return data_dir, asyncio.run(make())


def test_audit_anchor_and_export(site, tmp_path):
    data_dir, _ = site
    anchored = run(data_dir, "audit", "anchor", "--json")
    assert anchored.returncode == 0, anchored.stderr
    assert json.loads(anchored.stdout)["file"] == str(data_dir / "audit-anchors.log")
    out = tmp_path / "audit.jsonl"
    exported = run(data_dir, "audit", "export", "--format", "jsonl", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and "events written" in exported.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events[-1]["type"] == "audit.read" and events[-1]["details"]["purpose"] == "export"
    again = run(data_dir, "audit", "export", "--format", "jsonl", "-o", str(out))
    assert again.returncode == 1 and "exists" in again.stderr
    cef = run(data_dir, "audit", "export", "--format", "cef", "--since", "2000-01-01")
    assert cef.returncode == 0 and all(line.startswith("CEF:0|Bastion|Bastion|") for line in cef.stdout.splitlines())
    bad = run(data_dir, "audit", "export", "--format", "cef", "--since", "last tuesday")
    assert bad.returncode == 2 and "--since" in bad.stderr
    bad = run(data_dir, "audit", "export", "--format", "xml")
    assert bad.returncode == 2


def test_hold_release_and_retention(site):
    data_dir, session_id = site
    held = run(data_dir, "recording", "hold", session_id)
    assert held.returncode == 0 and "on legal hold" in held.stdout, held.stderr
    planned = run(data_dir, "recording", "retention", "--dry-run", "--json")
    assert planned.returncode == 0 and json.loads(planned.stdout) == []  # retention 0 and held: nothing
    config = data_dir / "bastion.toml"
    assert "# retention_days = 0" in config.read_text()
    config.write_text(config.read_text().replace("# retention_days = 0", "retention_days = 30"))
    still_held = run(data_dir, "recording", "retention", "--json")
    assert still_held.returncode == 0 and json.loads(still_held.stdout) == [], still_held.stderr
    released = run(data_dir, "recording", "release", session_id, "--json")
    assert json.loads(released.stdout) == {"session_id": session_id, "legal_hold": False, "changed": True}
    planned = json.loads(run(data_dir, "recording", "retention", "--dry-run", "--json").stdout)
    assert [(p["session_id"], p["action"]) for p in planned] == [(session_id, "would shred")]
    missing = run(data_dir, "recording", "hold", "nope")
    assert missing.returncode == 1 and "no session" in missing.stderr


def test_backup_create_and_restore(site, tmp_path):
    data_dir, session_id = site
    out = tmp_path / "b.bbak"
    created = run(data_dir, "backup", "create", str(out), "--passphrase-stdin", input=PASSPHRASE)
    assert created.returncode == 0, created.stderr
    assert "backup written to" in created.stdout and PASSPHRASE.strip() not in created.stdout + created.stderr
    no_tty = run(data_dir, "backup", "create", str(tmp_path / "c.bbak"))
    assert no_tty.returncode == 2 and "--passphrase-stdin" in no_tty.stderr

    target = tmp_path / "new"
    no_dir = run(None, "backup", "restore", str(out), "--passphrase-stdin", input=PASSPHRASE)
    assert no_dir.returncode == 2 and "--data-dir" in no_dir.stderr
    wrong = run(None, "backup", "restore", str(out), "--data-dir", str(target), "--passphrase-stdin",
                input="not it at all\n")
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr and not target.exists()
    restored = run(None, "backup", "restore", str(out), "--data-dir", str(target), "--passphrase-stdin",
                   input=PASSPHRASE)
    assert restored.returncode == 0, restored.stderr
    assert f"into {target}" in restored.stdout
    verify = subprocess.run([sys.executable, "-m", "bastion", "recording", "verify", "--all", "--json",
                             "--data-dir", str(target)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and [r["session_id"] for r in json.loads(verify.stdout)] == [session_id]
