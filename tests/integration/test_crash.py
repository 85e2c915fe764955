"""Fail-closed recording and crash safety: kill -9 mid-session, unwritable recording storage."""

from __future__ import annotations

import json
import os
import time

from tests.support.clients import paramiko_client, ssh
from tests.support.gateway import GatewayProcess
from tests.support.recordings import bastion_cli, export_events, output_text, wait_for_sessions


def test_kill_9_mid_session_then_the_recording_exports_up_to_the_kill(testbed, tmp_path):
    gateway = GatewayProcess(testbed.data_dir).start()
    alice = testbed.user("shell")
    try:
        client = paramiko_client(gateway.port, alice, f"{alice.name}:web01")
        chan = client.invoke_shell(term="xterm")
        chan.send(b"echo BEFORE-KILL-$((1+1))\n")
        data, deadline = b"", time.monotonic() + 20
        while b"BEFORE-KILL-2" not in data and time.monotonic() < deadline:
            data += chan.recv(4096)
        time.sleep(2.5)  # more than the one-second flush interval
        gateway.kill9()
        client.close()
    finally:
        gateway.stop()
    session = wait_for_sessions(testbed, alice.name, ended=False)[0]
    assert session["ended_at"] is None
    # A restarted gateway seals what the crash left open; the shared test gateway does it on its next start,
    # so start one more here, as an operator would after the crash.
    restarted = GatewayProcess(testbed.data_dir).start()
    restarted.stop()
    # Without --force the unsealed recording is refused (it cannot prove it is complete)...
    refused = bastion_cli(testbed.data_dir, "recording", "export", session["id"], "-o", str(tmp_path / "x.cast"))
    assert refused.returncode == 1 and not (tmp_path / "x.cast").exists()
    # ...with --force its verified prefix is exported, marked, and plays with the real asciinema.
    header, events = export_events(testbed.data_dir, session["id"], tmp_path / "crash.cast", "--force")
    assert "BEFORE-KILL-2" in output_text(events)
    assert header["bastion_verification"].startswith("FAILED")
    verify = bastion_cli(testbed.data_dir, "recording", "verify", session["id"], "--json")
    report = json.loads(verify.stdout)[0]
    assert verify.returncode == 1 and report["status"] in ("unsealed", "truncated") and report["chunks"] >= 1


def test_session_refused_when_recording_cannot_be_written(testbed, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_RECORDING_DIR": str(blocker)}).start()
    alice = testbed.user("exec")
    try:
        result = ssh(gateway.port, alice, f"{alice.name}:web01", "echo must-not-run; touch /tmp/bastion-should-not-exist")
    finally:
        gateway.stop()
    assert result.returncode != 0 and b"must-not-run" not in result.stdout
    assert b"recording" in result.stderr
    assert not os.path.exists("/tmp/bastion-should-not-exist")
    session = wait_for_sessions(testbed, alice.name)[0]
    assert session["end_reason"] == "recording unavailable"
