"""ProxyJump (`ssh -J`, i.e. `ssh -W host:22` through the gateway) to a granted target: terminated by the
gateway, served with the bastion's credentials and recorded; anything else refused like any forward."""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid

import pytest

from tests.support.clients import COMMON, Login, paramiko_client
from tests.support.recordings import export_events, output_text, wait_for_audit, wait_for_sessions


def _jump(testbed, login: Login, outer_spec: str | None = None) -> list[str]:
    """Options that make the stock client hop through the gateway, as `-J` does (`ssh -W %h:%p` as the
    ProxyCommand: -J passes no -i or -o of the command line to the hop, so it is spelled out)."""
    hop = ["ssh", "-p", str(testbed.port), *COMMON, *login.options(), "-W", "%h:%p",
           f"{outer_spec or login.name}@127.0.0.1"]
    return ["-o", "ProxyCommand=" + shlex.join(hop)]


def _run(args: list[str], login: Login, input: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(args, input=input, capture_output=True, timeout=60, env=login.env(), start_new_session=True)


def _inner(testbed, login: Login) -> list[str]:
    # The inner connection needs nothing of the client: its login is the outer one. LogLevel INFO (the first
    # value wins) shows the gateway's banner.
    return ["-o", "LogLevel=INFO", *COMMON, *_jump(testbed, login), "-o", "PreferredAuthentications=none,publickey,password",
            "-o", "NumberOfPasswordPrompts=0", "-o", "BatchMode=yes"]


def test_ssh_through_the_jump_runs_on_the_target_with_the_bastions_key_and_is_recorded(testbed, tmp_path):
    alice = testbed.user("shell,exec")
    marker = f"JUMPED-{uuid.uuid4().hex[:6]}"
    result = _run(["ssh", *_inner(testbed, alice), "root@web01", f"echo {marker}; id -un"], alice)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [marker, "root"]
    [session] = wait_for_sessions(testbed, alice.name)
    assert (session["target"], session["account"], session["kind"]) == ("web01", "root", "exec")
    _, events = export_events(testbed.data_dir, session["id"], tmp_path / "jump.cast")
    assert marker in output_text(events)


def test_scp_and_sftp_through_the_jump_follow_the_transfer_actions(testbed, tmp_path):
    alice = testbed.user("sftp-read")
    source = f"/tmp/bastion-jump-{uuid.uuid4().hex[:8]}"
    content = os.urandom(6 * 1024 * 1024)  # several times what the hop holds before it pauses either side
    with open(source, "wb") as out:
        out.write(content)
    try:
        got = tmp_path / "got.bin"
        result = _run(["scp", *_inner(testbed, alice), f"root@web01:{source}", str(got)], alice)
        assert result.returncode == 0, result.stderr
        assert got.read_bytes() == content
        upload = _run(["sftp", *_inner(testbed, alice), "-b", "-", "root@web01"], alice,
                      input=f"put {got} {source}.up\n".encode())
        assert upload.returncode != 0 and not os.path.exists(source + ".up")   # sftp-read only
    finally:
        for path in (source, source + ".up"):
            if os.path.exists(path):
                os.unlink(path)
    sessions = wait_for_sessions(testbed, alice.name, count=2)
    assert {(s["target"], s["kind"]) for s in sessions} == {("web01", "sftp")}
    transfers = wait_for_audit(testbed, "transfer", alice.name, until=lambda ev: len(ev) >= 2)
    assert any(e["type"] == "transfer" and e["details"]["size"] == len(content) for e in transfers)
    assert any(e["type"] == "transfer.denied" for e in transfers)


def test_an_upload_through_the_jump_arrives_whole(testbed, tmp_path):
    bob = testbed.user("sftp-read,sftp-write")
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(6 * 1024 * 1024))
    dest = f"/tmp/bastion-jump-up-{uuid.uuid4().hex[:8]}"
    try:
        result = _run(["scp", *_inner(testbed, bob), str(local), f"root@web01:{dest}"], bob)
        assert result.returncode == 0, result.stderr
        with open(dest, "rb") as arrived:
            assert arrived.read() == local.read_bytes()
    finally:
        if os.path.exists(dest):
            os.unlink(dest)


def test_a_hop_to_an_ungranted_account_or_target_is_refused_and_nothing_runs(testbed):
    alice = testbed.user("exec")
    flag = f"/tmp/bastion-jump-flag-{uuid.uuid4().hex[:8]}"
    for destination in ("nobody@web01", f"root@no-such-target-{uuid.uuid4().hex[:6]}", "root@datasets"):
        result = _run(["ssh", *_inner(testbed, alice), destination, f"touch {flag}"], alice)
        assert result.returncode == 255, (destination, result.stdout)
        assert not os.path.exists(flag)
    refused = _run(["ssh", *_inner(testbed, alice), "nobody@web01", "true"], alice)
    assert b"bastion: no access to web01 as nobody" in refused.stderr
    denied = wait_for_audit(testbed, "session.denied", alice.name)
    assert any(e["details"]["kind"] == "proxyjump" for e in denied)
    forwards = wait_for_audit(testbed, "forward.denied", alice.name)
    assert forwards and all(e["details"]["dest_port"] == 22 for e in forwards)
    assert [s for s in testbed.admin().list_sessions() if s["user"] == alice.name] == []


def test_a_hop_to_a_target_above_the_outer_logins_level_names_the_login_that_reaches_it(testbed):
    high = testbed.target("jumphigh", min_level=2)
    alice = testbed.user("exec", target=high, totp=True)
    result = _run(["ssh", *_inner(testbed, alice), f"root@{high}", "echo must-not-run"], alice)
    assert result.returncode == 255 and b"must-not-run" not in result.stdout
    assert f"{high} needs authentication level 2".encode() in result.stderr
    assert f"ssh -J {alice.name}:{high}@BASTION".encode() in result.stderr
    # Jumping through a login that reached level 2 (password and TOTP) goes through.
    through = _run(["ssh", *_inner(testbed, alice)[:2], *COMMON, *_jump(testbed, alice, f"{alice.name}:{high}"),
                    "-o", "BatchMode=yes",
                    f"root@{high}", "echo stepped-up"], alice)
    assert through.returncode == 0 and through.stdout.strip() == b"stepped-up", through.stderr


def test_garbage_hop_destinations_are_refused_and_the_gateway_carries_on(testbed):
    alice = testbed.user("exec")
    for host in ("web01;id", "-oProxyCommand=id", "a" * 300, "..", "web01 ", "%00"):
        hop = ["ssh", "-p", str(testbed.port), *COMMON, *alice.options(), "-W", f"{host}:22",
               f"{alice.name}@127.0.0.1"]
        result = _run(hop, alice)
        assert result.returncode != 0 and not result.stdout.startswith(b"SSH-"), host
    again = _run(["ssh", *_inner(testbed, alice), "root@web01", "echo still-here"], alice)
    assert again.stdout.strip() == b"still-here", again.stderr


def _hop(outer, account: str = "root", target: str = "web01"):
    """paramiko, as an independent client: a direct-tcpip channel through `outer` and an SSH transport over
    it, authenticated with "none" (the hop is bound to the outer login)."""
    import paramiko

    channel = outer.get_transport().open_channel("direct-tcpip", (target, 22), ("127.0.0.1", 0), timeout=20)
    inner = paramiko.Transport(channel)
    inner.start_client(timeout=20)
    inner.auth_none(account)
    return inner


def test_closing_the_outer_connection_ends_every_session_inside_its_hops(testbed):
    alice = testbed.user("exec")
    outer = paramiko_client(testbed.port, alice, alice.name)
    try:
        inner = _hop(outer)
        assert inner.is_authenticated()
        session = inner.open_session(timeout=20)
        session.exec_command("echo started; sleep 60")
        session.settimeout(20)
        assert session.recv(100).startswith(b"started")
        [live] = wait_for_sessions(testbed, alice.name, ended=False)
        assert (live["target"], live["account"], live["status"]) == ("web01", "root", "live")
    finally:
        outer.close()
    [ended] = wait_for_sessions(testbed, alice.name)
    assert ended["id"] == live["id"] and ended["ended_at"]
    [hop] = wait_for_audit(testbed, "proxyjump", alice.name)
    assert hop["details"]["account"] == "root" and hop["details"]["outer_connection_id"] != \
        hop["details"]["connection_id"]
    starts = wait_for_audit(testbed, "session.start", alice.name)
    assert [e["details"]["connection_id"] for e in starts] == [hop["details"]["connection_id"]]


def test_hops_per_connection_are_capped_and_a_hop_inside_a_hop_is_only_a_forward(testbed):
    import paramiko

    from bastion.ssh.jump import MAX_HOPS

    alice = testbed.user("exec")
    outer = paramiko_client(testbed.port, alice, alice.name)
    try:
        hops = [_hop(outer) for _ in range(MAX_HOPS)]
        try:
            _hop(outer)
            raise AssertionError("a hop over the cap was opened")
        except paramiko.ChannelException as refused:
            assert refused.code == 4  # OPEN_RESOURCE_SHORTAGE
        with pytest.raises(paramiko.ChannelException):
            hops[0].open_channel("direct-tcpip", ("web01", 22), ("127.0.0.1", 0), timeout=20)
        hops.pop().close()
        again = _hop(outer)  # a closed hop frees its place
        assert again.is_authenticated()
        again.close()
        for hop in hops:
            hop.close()
    finally:
        outer.close()
    denied = wait_for_audit(testbed, "forward.denied", alice.name)
    assert [e["details"]["dest_host"] for e in denied] == ["web01"]



def test_a_hop_cycling_through_account_names_is_dropped_like_any_login(testbed):
    import paramiko

    alice = testbed.user("exec")
    outer = paramiko_client(testbed.port, alice, alice.name)
    refused = 0
    try:
        channel = outer.get_transport().open_channel("direct-tcpip", ("web01", 22), ("127.0.0.1", 0), timeout=20)
        inner = paramiko.Transport(channel)
        inner.start_client(timeout=20)
        for attempt in range(30):
            try:
                inner.auth_none(f"nobody{attempt}")
            except paramiko.BadAuthenticationType:
                refused += 1
            except (paramiko.SSHException, EOFError, OSError):
                break
            if not inner.is_active():
                break
        assert not inner.is_active()
    finally:
        outer.close()
    assert 1 <= refused < 10  # the tenth refusal drops the connection (MAX_REJECTIONS), as for any login
    denied = wait_for_audit(testbed, "session.denied", alice.name, until=lambda ev: len(ev) >= 10)
    assert sorted(e["details"]["account"] for e in denied) == sorted(f"nobody{i}" for i in range(10))


def test_a_user_with_two_accounts_on_the_target_jumps_to_the_one_named(testbed):
    if len(testbed.accounts) < 2:
        pytest.skip("this machine has no second account for the target (needs root to create one)")
    other = testbed.accounts[1]
    alice = testbed.user("exec")
    testbed.admin().add_grant(user=alice.name, target="web01", account=other, actions=["exec"])
    for account in ("root", other):
        result = _run(["ssh", *_inner(testbed, alice), f"{account}@web01", "id -un"], alice)
        assert result.returncode == 0 and result.stdout.strip() == account.encode(), result.stderr
