"""Who gets through: grants, revocation, expiry, pinned host keys, and answers that reveal nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import asyncssh

from bastion.recordings import list_audit

from tests.support.clients import Login, paramiko_client, read_until, ssh
from tests.support.gateway import GatewayProcess
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


async def _two_channels(port: int, login: Login, spec: str, between) -> tuple[int, int]:
    """Run `true` on one connection, call `between`, then open a second channel on the same connection."""
    async with asyncssh.connect("127.0.0.1", port, username=spec, client_keys=[str(login.key)], known_hosts=None,
                                agent_path=None, config=None) as conn:
        first = await conn.run("true")
        await asyncio.to_thread(between)
        second = await conn.run("echo SECOND-RAN")
        return first.exit_status, (second.exit_status, second.stdout)


def test_a_revoked_grant_stops_new_channels_on_an_open_connection_at_once(testbed):
    # a gateway whose periodic re-check is far away: only the per-channel decision can stop this
    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_POLICY_RECHECK_INTERVAL": "3600"}).start()
    alice = testbed.user("exec", key=True)
    grant = [g for g in testbed.admin().list_grants() if g["subject"] == f"user:{alice.name}"][0]
    try:
        first, (status, stdout) = asyncio.run(_two_channels(gateway.port, alice, f"{alice.name}:web01",
                                                            lambda: testbed.admin().revoke_grant(grant["id"])))
    finally:
        gateway.stop()
    assert first == 0
    assert status != 0 and "SECOND-RAN" not in stdout


def test_rsync_server_is_not_a_transfer_and_needs_exec(testbed):
    alice = testbed.user("sftp-read,sftp-write")
    result = ssh(testbed.port, alice, f"{alice.name}#web01",
                 "rsync --server --sender --remove-source-files -logDtpre.iLsfxCIvu . /etc/hostname")
    assert result.returncode == 1 and b"not granted" in result.stderr


def test_public_key_query_does_not_reveal_grants(testbed, tmp_path):
    alice = testbed.user("exec", key=True)
    only_public = tmp_path / "only"
    only_public.with_suffix(".pub").write_bytes(alice.key.with_suffix(".pub").read_bytes())
    answers = []
    for spec in (f"{alice.name}:web01", f"{alice.name}:no-such-target"):
        result = ssh(testbed.port, Login(alice.name, key=only_public.with_suffix(".pub")), spec, "true",
                     extra=["-v"])
        answers.append(b"Server accepts key" in result.stderr)
    assert answers[0] == answers[1]


def test_a_live_shell_ends_when_only_its_shell_grant_is_revoked(testbed):
    alice = testbed.user("shell")
    testbed.admin().add_grant(user=alice.name, target="web01", account="root", actions=["sftp-read"])
    client = paramiko_client(testbed.port, alice, f"{alice.name}:web01")
    chan = client.invoke_shell()
    chan.send(b"echo READY\n")
    read_until(chan, b"READY")
    shell_grant = [g for g in testbed.admin().list_grants()
                   if g["subject"] == f"user:{alice.name}" and "shell" in g["actions"]][0]
    testbed.admin().revoke_grant(shell_grant["id"])
    chan.settimeout(20)
    while not chan.exit_status_ready():
        if not chan.recv(4096):
            break
    client.close()
    assert wait_for_sessions(testbed, alice.name)[0]["end_reason"] == "access revoked or expired"


def test_stdin_sent_while_the_session_is_set_up_arrives_complete_and_in_order(testbed):
    alice = testbed.user("exec")
    client = paramiko_client(testbed.port, alice, f"{alice.name}:web01")
    stdin, stdout, _ = client.exec_command("cat")
    lines = b"".join(b"%05d\n" % i for i in range(400))
    stdin.write(lines)
    stdin.channel.shutdown_write()
    assert stdout.read() == lines
    client.close()
