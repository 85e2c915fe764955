"""Records end to end: a recorded session survives backup and restore; disk full while recording fails closed."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bastion.audit.anchor import anchor_now, verify_with_anchors
from bastion.audit.log import verify_chain
from bastion.backup import BackupError, create_backup, restore_backup
from bastion.config import load_config
from bastion.keys import load_node_key
from bastion.recorder.reader import verify
from bastion.recordings import export_session, verify_sessions
from bastion.services import Services
from bastion.store.models import Recording
from tests.support.clients import paramiko_client
from tests.support.gateway import GatewayProcess
from tests.support.recordings import wait_for_sessions

PASSPHRASE = "restore drill passphrase 2026"


def shell(port: int, login, commands: list[bytes], until: bytes, timeout: float = 30) -> tuple[bytes, int]:
    """Run commands in a recorded shell; return everything it printed (stderr too) and the exit status."""
    client = paramiko_client(port, login, f"{login.name}:web01")
    try:
        chan = client.invoke_shell(term="xterm", width=80, height=24)
        chan.set_combine_stderr(True)
        for line in commands:
            chan.send(line)
        data, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            if chan.recv_ready():
                chunk = chan.recv(65536)
                data += chunk
                if until and until in data[-200_000:]:
                    break
                if not chunk:
                    break
            elif (chan.eof_received or chan.closed) and not chan.recv_ready():
                # Not at the exit status: a gateway sends it at once, while data (the reason the session
                # ended) may still wait for window behind a flood; like OpenSSH, read until the channel ends.
                break
            else:
                time.sleep(0.01)
        status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        return data, status
    finally:
        client.close()


async def _restored_report(path: Path, session_id: str, cast: Path) -> dict:
    services = await Services.open(load_config(path, environ={}))
    try:
        chain = await verify_chain(services.db)
        anchored = await verify_with_anchors(services)
        reports = await verify_sessions(services, None, actor="restore-drill")
        await export_session(services, session_id, cast, force=False, actor="restore-drill")
        async with services.db() as db:
            paths = [row.path for row in (await db.execute(select(Recording))).scalars()]
        return {"chain": chain, "anchored": anchored, "reports": reports, "paths": paths}
    finally:
        await services.close()


def test_backup_of_a_live_gateway_restores_into_sqlite_and_replays(testbed, tmp_path):
    login = testbed.user("shell")
    output, status = shell(testbed.port, login, [b"echo BACKUP-MARK-$((6*7))\n", b"exit\n"], until=b"")
    assert b"BACKUP-MARK-42" in output and status == 0
    session = wait_for_sessions(testbed, login.name)[0]
    testbed.directory.call(anchor_now)
    source_reports = {r["session_id"]: r for r in testbed.directory.call(
        lambda s: verify_sessions(s, None, actor="restore-drill"))}

    out = tmp_path / "site.bbak"
    summary = testbed.directory.call(lambda s: create_backup(s, out, PASSPHRASE, actor="restore-drill"))
    assert summary["files"] >= 2 and out.stat().st_size == summary["size"]

    with pytest.raises(BackupError, match="wrong passphrase"):
        asyncio.run(restore_backup(out, "not the drill passphrase", tmp_path / "wrong"))
    assert not (tmp_path / "wrong").exists()

    target = tmp_path / "restored"
    result = asyncio.run(restore_backup(out, PASSPHRASE, target))
    assert result["database"] == "sqlite" and result["source_backend"] == testbed.backend
    report = asyncio.run(_restored_report(target, session["id"], tmp_path / "s.cast"))
    assert report["chain"][0], report["chain"]
    assert report["anchored"][0], report["anchored"]
    assert all(path.startswith(str(target / "recordings")) for path in report["paths"])
    restored = {r["session_id"]: r for r in report["reports"]}
    assert restored[session["id"]]["ok"] and restored[session["id"]]["status"] == "sealed"
    # Every recording verifies exactly as it does at the source (crash tests leave some unsealed on purpose).
    for session_id, source in source_reports.items():
        if source["status"] != "corrupt":
            assert (restored[session_id]["status"], restored[session_id]["chunks"]) == \
                (source["status"], source["chunks"]), session_id
    assert "BACKUP-MARK-42" in (tmp_path / "s.cast").read_text()
    played = subprocess.run([str(Path(__import__("sys").executable).with_name("asciinema")), "cat",
                             str(tmp_path / "s.cast")], capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    assert played.returncode == 0 and b"BACKUP-MARK-42" in played.stdout


@pytest.fixture
def small_disk(tmp_path):
    directory = tmp_path / "small"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(directory)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def test_disk_full_while_recording_ends_the_session_and_keeps_what_was_written(testbed, small_disk):
    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_RECORDING_DIR": str(small_disk)}).start()
    login = testbed.user("shell")
    try:
        output, status = shell(gateway.port, login, [b"head -c 5000000 /dev/urandom | base64; echo FLOOD-$((1+1))-DONE\n"],
                               until=b"session cannot continue unrecorded", timeout=60)
        session = wait_for_sessions(testbed, login.name)[0]  # the gateway closes the row itself
    finally:
        gateway.stop()
    tail = output[-2000:].decode(errors="replace")
    assert "bastion: session ended: recording failed (recording storage full)" in tail, tail[-500:]
    assert b"FLOOD-2-DONE" not in output  # ended before the command could finish
    assert "recording" in session["end_reason"]

    async def recording_path(services) -> str:
        async with services.db() as db:
            row = (await db.execute(select(Recording).where(Recording.session_id == session["id"]))).scalar_one()
        return row.path

    path = Path(testbed.directory.call(recording_path))
    assert small_disk in path.parents
    report = verify(path, load_node_key(testbed.data_dir / "keys").public_key())
    assert report.status in ("failed", "unsealed") and report.chunks >= 1, report
    assert report.first_bad_chunk is None  # valid up to the failure
