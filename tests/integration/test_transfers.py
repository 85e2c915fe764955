"""File transfers and forwarding: scp and sftp under sftp-read / sftp-write, port forwards under `forward`."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid

from tests.support.clients import COMMON, scp, sftp, ssh
from tests.support.recordings import wait_for_audit, wait_for_sessions


def remote_path(name: str) -> str:
    return f"/tmp/bastion-test-{name}-{uuid.uuid4().hex[:8]}"


def test_scp_upload_refused_under_sftp_read_and_nothing_written(testbed, tmp_path):
    alice = testbed.user("sftp-read")
    local = tmp_path / "upload.txt"
    local.write_text("must not arrive\n")
    dest = remote_path("ro")
    result = scp(testbed.port, alice, str(local), f"{alice.name}#web01@127.0.0.1:{dest}")
    assert result.returncode != 0 and b"ermission denied" in result.stderr
    assert not os.path.exists(dest)
    legacy = scp(testbed.port, alice, str(local), f"{alice.name}#web01@127.0.0.1:{dest}", legacy=True)
    assert legacy.returncode != 0 and not os.path.exists(dest)
    denied = wait_for_audit(testbed, "transfer.denied", alice.name)
    assert any(e["details"]["operation"] == "open for writing" and e["details"]["path"] == dest for e in denied)


def test_scp_upload_and_download_with_sftp_write_and_read(testbed, tmp_path):
    alice = testbed.user("sftp-read,sftp-write")
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(300_000))
    dest = remote_path("rw")
    try:
        result = scp(testbed.port, alice, str(local), f"{alice.name}#web01@127.0.0.1:{dest}")
        assert result.returncode == 0, result.stderr
        assert open(dest, "rb").read() == local.read_bytes()
        back = tmp_path / "back.bin"
        # scp refuses '#' in the user of a download source (its okname check), so use the '@' form
        result = scp(testbed.port, alice, f"{alice.name}@web01@127.0.0.1:{dest}", str(back))
        assert result.returncode == 0 and back.read_bytes() == local.read_bytes()
    finally:
        if os.path.exists(dest):
            os.unlink(dest)
    wait_for_sessions(testbed, alice.name, count=2)
    transfers = wait_for_audit(testbed, "transfer", alice.name, until=lambda events: len(events) >= 2)
    moved = {(e["details"]["direction"], e["details"]["path"], e["details"]["size"]) for e in transfers
             if e["type"] == "transfer"}
    assert ("upload", dest, 300_000) in moved and ("download", dest, 300_000) in moved
    sessions = wait_for_sessions(testbed, alice.name, count=2)
    assert {s["kind"] for s in sessions} == {"sftp"}


def test_legacy_scp_needs_sftp_write_not_exec(testbed, tmp_path):
    alice = testbed.user("sftp-write")
    local = tmp_path / "legacy.txt"
    local.write_text("legacy scp\n")
    dest = remote_path("legacy")
    try:
        result = scp(testbed.port, alice, str(local), f"{alice.name}#web01@127.0.0.1:{dest}", legacy=True)
        assert result.returncode == 0, result.stderr
        assert open(dest).read() == "legacy scp\n"
    finally:
        if os.path.exists(dest):
            os.unlink(dest)
    assert ssh(testbed.port, alice, f"{alice.name}:web01", "id").returncode == 1
    assert any(e["details"]["protocol"] == "scp" and e["details"]["size"] > 0
               for e in wait_for_audit(testbed, "transfer", alice.name) if e["type"] == "transfer")


def test_sftp_read_only_lists_and_reads_but_cannot_change_anything(testbed, tmp_path):
    alice = testbed.user("sftp-read", key=True)  # sftp -b runs in batch mode: keys only
    victim = remote_path("victim")
    with open(victim, "w") as handle:
        handle.write("original\n")
    try:
        batch = f"ls /etc/hostname\nget {victim} {tmp_path / 'got'}\n"
        result = sftp(testbed.port, alice, f"{alice.name}#web01", batch)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "got").read_text() == "original\n"
        for command in (f"rm {victim}", f"rename {victim} {victim}.x", f"mkdir {victim}.d", f"chmod 600 {victim}",
                        f"put {tmp_path / 'got'} {victim}", f"symlink {victim} {victim}.l"):
            result = sftp(testbed.port, alice, f"{alice.name}#web01", command + "\n")
            assert result.returncode != 0, command
        assert open(victim).read() == "original\n"
        assert oct(os.stat(victim).st_mode & 0o777) != oct(0o600)
        assert not any(os.path.exists(victim + suffix) for suffix in (".x", ".d", ".l"))
    finally:
        os.unlink(victim)


def test_sftp_refused_without_a_transfer_action(testbed):
    alice = testbed.user("shell,exec", key=True)
    result = sftp(testbed.port, alice, f"{alice.name}#web01", "ls /\n")
    assert result.returncode != 0


def _forward(testbed, login, allowed: bool) -> bytes:
    local_port = _free_port()
    args = ["ssh", "-p", str(testbed.port), *COMMON, *login.options(), "-N", "-o", "ExitOnForwardFailure=yes",
            "-L", f"127.0.0.1:{local_port}:127.0.0.1:{testbed.sshd.port}", f"{login.name}:web01@127.0.0.1"]
    process = subprocess.Popen(args, env=login.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", local_port), timeout=5) as sock:
                    sock.settimeout(10)
                    try:
                        return sock.recv(64)
                    except OSError:
                        return b""
            except OSError:
                time.sleep(0.1)
        return b""
    finally:
        process.kill()
        process.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_port_forwarding_refused_without_forward_and_audited(testbed):
    alice = testbed.user("shell,exec")
    assert not _forward(testbed, alice, allowed=False).startswith(b"SSH-")
    denied = wait_for_audit(testbed, "forward", alice.name, until=lambda ev: any(e["type"] == "forward.denied" for e in ev))
    assert any(e["type"] == "forward.denied" for e in denied)


def test_port_forwarding_from_the_target_side_with_forward(testbed):
    alice = testbed.user("forward")
    assert _forward(testbed, alice, allowed=True).startswith(b"SSH-2.0-OpenSSH")
    events = wait_for_audit(testbed, "forward", alice.name, until=lambda ev: any(e["type"] == "forward" for e in ev))
    assert any(e["type"] == "forward" and e["details"]["dest_port"] == testbed.sshd.port for e in events)
