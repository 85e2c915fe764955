"""`bastion demo` on a fresh directory: target, users and grants ready, and the printed commands work."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from bastion.localsshd import find_sshd
from tests.support.clients import COMMON, Login, paramiko_client, scp, ssh


def test_demo_starts_a_target_and_the_printed_logins_work(tmp_path):
    if find_sshd() is None:
        pytest.skip("openssh-server is not installed (make demo installs it)")
    data = tmp_path / "demo"
    process = subprocess.Popen([sys.executable, "-m", "bastion", "demo", "--data-dir", str(data), "--listen",
                                "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    text = ""
    try:
        deadline = time.monotonic() + 90
        while "Stop with Ctrl-C" not in text and time.monotonic() < deadline:
            line = process.stdout.readline().decode()
            if not line:
                break
            text += line
        port = int(re.search(r"running on 127\.0\.0\.1:(\d+)", text).group(1))
        passwords = dict(re.findall(r"^  (alice|bob)\s+(\S+)", text, re.M))
        alice = Login("alice", password=passwords["alice"])
        result = ssh(port, alice, "alice:web01", "uname -a")
        assert result.returncode == 0 and result.stdout.startswith(b"Linux"), result.stderr
        # The printed ProxyJump line, hop spelled out as a ProxyCommand (-J passes no options to the hop).
        account = re.search(r"account '([^']+)'", text).group(1)
        assert f"ssh -J alice@127.0.0.1:{port} {account}@web01 uname -a" in text
        hop = ["ssh", "-p", str(port), *COMMON, *alice.options(), "-W", "%h:%p", "alice@127.0.0.1"]
        jumped = subprocess.run(["ssh", *COMMON, "-o", "ProxyCommand=" + shlex.join(hop), "-o", "BatchMode=yes",
                                 f"{account}@web01", "uname -a"], capture_output=True, timeout=60, env=alice.env(),
                                start_new_session=True)
        assert jumped.returncode == 0 and jumped.stdout.startswith(b"Linux"), jumped.stderr
        source = tmp_path / "f.txt"
        source.write_text("demo\n")
        dest = f"/tmp/bastion-demo-{os.getpid()}.txt"
        refused = scp(port, Login("bob", password=passwords["bob"]), str(source), f"bob#web01@127.0.0.1:{dest}")
        assert refused.returncode != 0 and not os.path.exists(dest)
        # Refused by the SFTP filter after a good login, not at authentication ("Permission denied (methods)").
        assert b"Permission denied" in refused.stderr and b"Permission denied (" not in refused.stderr
        # The printed dataset command: bob downloads the published demo dataset over SFTP.
        assert f"sftp -P {port} 'bob#datasets@127.0.0.1'" in text
        fetched = tmp_path / "customers.csv"
        # paramiko: the OpenSSH sftp client in batch mode does not ask for passwords.
        client = paramiko_client(port, Login("bob", password=passwords["bob"]), "bob#datasets")
        try:
            client.open_sftp().get("/customers/customers.csv", str(fetched))
        finally:
            client.close()
        assert fetched.read_bytes() == (data / "demo-dataset" / "customers.csv").read_bytes()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
    assert (data / "demo-credentials.json").stat().st_mode & 0o077 == 0
    assert not (data / "demo-target" / "sshd.pid").exists() or not _alive(data / "demo-target" / "sshd.pid")


def _alive(pid_file) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False
