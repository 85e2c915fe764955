"""Who gets through: grants, revocation, expiry, pinned host keys, and answers that reveal nothing."""

from __future__ import annotations

import datetime as dt
import time

import asyncssh

from bastion.recordings import list_audit

from tests.support.clients import Login, paramiko_client, ssh
from tests.support.recordings import bastion_cli, wait_for_sessions

DENIED = b"Permission denied"


def test_unknown_user_unknown_target_and_forbidden_target_look_the_same(testbed):
    alice = testbed.user("shell,exec")
    testbed.admin().add_target(f"other-{testbed.backend}", "127.0.0.1", testbed.sshd.port,
                               testbed.sshd.host_key_pub.read_text())
    ghost = Login("ghost-" + testbed.backend, password=alice.password)
    attempts = [(ghost, f"{ghost.name}:web01"), (alice, f"{alice.name}:no-such-target"),
                (alice, f"{alice.name}:other-{testbed.backend}"), (alice, f"{alice.name}:web01:nosuchaccount")]
    answers = set()
    for login, spec in attempts:
        result = ssh(testbed.port, login, spec, "true")
        # the client echoes the login it used; everything else must be identical
        answers.add((result.returncode, result.stdout, result.stderr.replace(spec.encode(), b"LOGIN")))
    assert len(answers) == 1, answers
    code, _, stderr = answers.pop()
    assert code == 255 and DENIED in stderr
    # ...and the right target still works for alice with the same password
    assert ssh(testbed.port, alice, f"{alice.name}:web01", "true").returncode == 0


def test_wrong_password_and_key_are_refused_and_audited(testbed):
    alice = testbed.user("exec", key=True)
    assert ssh(testbed.port, Login(alice.name, password="wrong-password-123"), f"{alice.name}:web01",
               "true").returncode == 255
    assert ssh(testbed.port, Login(alice.name, key=alice.key), f"{alice.name}:web01", "true").returncode == 0
    other = testbed.user("exec", key=True)
    assert ssh(testbed.port, Login(alice.name, key=other.key), f"{alice.name}:web01", "true").returncode == 255
    events = [e for e in testbed.directory.call(lambda s: list_audit(s, "auth.", 500, "test")) if e["actor"] == alice.name]
    reasons = {e["details"].get("reason") for e in events if e["type"] == "auth.failure"}
    assert "wrong password" in reasons and "key not registered" in reasons
    assert any(e["type"] == "auth.success" and e["details"]["method"] == "publickey" for e in events)
    assert all("wrong-password-123" not in str(e) for e in events)


def test_revoked_grant_is_refused(testbed):
    alice = testbed.user("exec")
    assert ssh(testbed.port, alice, f"{alice.name}:web01", "true").returncode == 0
    grant = [g for g in testbed.admin().list_grants() if g["subject"] == f"user:{alice.name}"][0]
    result = bastion_cli(testbed.data_dir, "grant", "revoke", str(grant["id"]))
    assert result.returncode == 0, result.stderr
    assert ssh(testbed.port, alice, f"{alice.name}:web01", "true").returncode == 255


def test_expired_grant_is_refused(testbed):
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).isoformat()
    alice = testbed.user("exec", until=past)
    result = ssh(testbed.port, alice, f"{alice.name}:web01", "true")
    assert result.returncode == 255 and DENIED in result.stderr


def test_revocation_ends_a_live_session(testbed):
    alice = testbed.user("shell")
    client = paramiko_client(testbed.port, alice, f"{alice.name}:web01")
    chan = client.invoke_shell()
    chan.send(b"echo READY\n")
    deadline = time.monotonic() + 20
    data = b""
    while b"READY" not in data and time.monotonic() < deadline:
        data += chan.recv(4096)
    grant = [g for g in testbed.admin().list_grants() if g["subject"] == f"user:{alice.name}"][0]
    testbed.admin().revoke_grant(grant["id"])
    chan.settimeout(20)
    while not chan.exit_status_ready():
        chunk = chan.recv(4096)
        data += chunk
        if not chunk:
            break
    assert b"access revoked" in data + chan.recv_stderr(4096)
    client.close()
    session = wait_for_sessions(testbed, alice.name)[0]
    assert session["end_reason"] == "access revoked or expired"


def test_disabled_user_is_refused(testbed):
    alice = testbed.user("exec")
    assert bastion_cli(testbed.data_dir, "user", "disable", alice.name).returncode == 0
    assert ssh(testbed.port, alice, f"{alice.name}:web01", "true").returncode == 255


def test_host_key_mismatch_is_refused_audited_and_explained(testbed):
    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    name = f"spoofed-{testbed.backend}"
    testbed.admin().add_target(name, "127.0.0.1", testbed.sshd.port, wrong)
    public = testbed.admin().add_account(name, "root", generate=True)["public_key"]
    testbed.sshd.authorize("root", public)
    alice = testbed.user("exec", target=name)
    result = ssh(testbed.port, alice, f"{alice.name}:{name}", "echo should-not-run")
    assert result.returncode != 0 and b"should-not-run" not in result.stdout
    assert b"host key verification failed" in result.stderr
    assert wrong.split()[1].encode() not in result.stderr
    events = testbed.directory.call(lambda s: list_audit(s, "hostkey.mismatch", 50, "test"))
    assert any(e["target"] == name and e["actor"] == alice.name for e in events)
