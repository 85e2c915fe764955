"""Shells, commands and the menu through the gateway with real clients, and what the recording holds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import asyncssh
import pytest

from tests.support.clients import COMMON, paramiko_client, read_until, ssh
from tests.support.recordings import export_events, output_text, wait_for_sessions


def test_shell_is_proxied_and_recorded_with_output_and_resize(testbed, tmp_path):
    login = testbed.user("shell")
    client = paramiko_client(testbed.port, login, f"{login.name}:web01")
    chan = client.invoke_shell(term="xterm", width=80, height=24)
    chan.send(b"echo MARK-$((6*7))\n")
    read_until(chan, b"MARK-42")
    chan.resize_pty(width=120, height=40)
    chan.send(b"stty size\n")
    read_until(chan, b"40 120")
    chan.send(b"exit\n")
    assert chan.recv_exit_status() == 0
    client.close()
    session = wait_for_sessions(testbed, login.name)[0]
    assert session["kind"] == "shell" and session["target"] == "web01" and session["account"] == "root"
    header, events = export_events(testbed.data_dir, session["id"], tmp_path / "s.cast")
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert header["env"]["TERM"] == "xterm" and login.name in header["title"] and "web01" in header["title"]
    assert "MARK-42" in output_text(events)
    assert ["r", "120x40"] in [e[1:] for e in events]
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    played = subprocess.run([str(venv_bin("asciinema")), "cat", str(tmp_path / "s.cast")], capture_output=True,
                            timeout=60)
    assert played.returncode == 0 and b"MARK-42" in played.stdout


def venv_bin(name: str):
    import sys
    from pathlib import Path

    return Path(sys.executable).parent / name


def test_exec_passes_stdout_stderr_and_exit_status(testbed):
    login = testbed.user("exec")
    result = ssh(testbed.port, login, f"{login.name}:web01", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == b"out\n" and result.stderr == b"err\n"
    result = ssh(testbed.port, login, f"{login.name}#web01", "uname -s")
    assert result.returncode == 0 and result.stdout.strip() == b"Linux"


def test_exec_stdin_and_binary_output_pass_unchanged(testbed):
    login = testbed.user("exec")
    payload = bytes(range(256)) * 4096
    result = ssh(testbed.port, login, f"{login.name}:web01", "cat", input=payload)
    assert result.returncode == 0 and result.stdout == payload


def test_exec_recording_holds_output_and_never_the_piped_input(testbed, tmp_path):
    login = testbed.user("exec")
    ssh(testbed.port, login, f"{login.name}:web01", "cat >/dev/null; echo RECORDED-OUT",
        input=b"STDIN-SECRET-VALUE\n")
    session = wait_for_sessions(testbed, login.name)[0]
    assert session["command"] == "cat >/dev/null; echo RECORDED-OUT" and session["exit_status"] == 0
    _, events = export_events(testbed.data_dir, session["id"], tmp_path / "e.cast")
    assert "RECORDED-OUT" in output_text(events)
    assert "STDIN-SECRET-VALUE" not in (tmp_path / "e.cast").read_text()


def test_password_typed_without_echo_is_not_recorded(testbed, tmp_path):
    login = testbed.user("shell")
    client = paramiko_client(testbed.port, login, f"{login.name}:web01")
    chan = client.invoke_shell(term="xterm")
    # the command line is echoed too, so the prompt is spelled so that only its output matches
    chan.send(b"stty -echo; printf 'Pass''word: '; read pw; stty echo; echo; echo GOT-${#pw}\n")
    read_until(chan, b"Password: ")
    chan.send(b"hunter2-never-recorded\n")
    read_until(chan, b"GOT-22")
    chan.send(b"exit\n")
    chan.recv_exit_status()
    client.close()
    session = wait_for_sessions(testbed, login.name)[0]
    export_events(testbed.data_dir, session["id"], tmp_path / "p.cast")
    text = (tmp_path / "p.cast").read_text()
    assert "hunter2" not in text and "GOT-22" in text


def test_shell_needs_the_shell_action(testbed):
    login = testbed.user("exec")
    result = ssh(testbed.port, login, f"{login.name}:web01", tty=True)
    assert result.returncode != 0 and b"not granted" in result.stderr + result.stdout
    login = testbed.user("shell")
    result = ssh(testbed.port, login, f"{login.name}:web01", "id")
    assert result.returncode == 1 and b"not granted" in result.stderr


def test_environment_is_limited_to_the_allowlist(testbed):
    login = testbed.user("exec")
    result = ssh(testbed.port, login, f"{login.name}:web01", 'echo "lang=$LANG foo=$FOO"',
                 extra=["-o", "SetEnv=LANG=C.UTF-8 FOO=leak"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"lang=C.UTF-8 foo="


async def _asyncssh_exec(testbed, login, command, signal=None):
    async with asyncssh.connect("127.0.0.1", testbed.port, username=f"{login.name}:web01:bastiontest",
                                password=login.password, known_hosts=None, client_keys=None, agent_path=None,
                                config=None) as conn:
        process = await conn.create_process(command)
        if signal:
            await asyncio.sleep(1.0)
            process.send_signal(signal)
        result = await asyncio.wait_for(process.wait(), 30)
        return result


def test_signal_and_exit_signal_pass_through(testbed):
    if "bastiontest" not in testbed.accounts:
        pytest.skip("no unprivileged account on this machine (tests must run as root to create it)")
    login = testbed.user("exec", account="bastiontest")
    result = asyncio.run(_asyncssh_exec(testbed, login, "sleep 30", signal="INT"))
    assert result.exit_signal is not None and result.exit_signal[0] == "INT"
    result = asyncio.run(_asyncssh_exec(testbed, login, "kill -TERM $$"))
    assert result.exit_signal is not None and result.exit_signal[0] == "TERM"


def test_menu_lists_only_granted_targets_and_connects(testbed, tmp_path):
    admin = testbed.admin()
    admin.add_target(f"hidden-{testbed.backend}", "127.0.0.1", testbed.sshd.port, testbed.sshd.host_key_pub.read_text())
    login = testbed.user("shell")
    client = paramiko_client(testbed.port, login, login.name)
    chan = client.invoke_shell(term="xterm", width=100, height=30)
    screen = read_until(chan, b"filter:")
    assert b"web01" in screen and b"hidden-" not in screen
    chan.send(b"web\r")
    chan.send(b"echo VIA-MENU-$((40+2))\n")
    read_until(chan, b"VIA-MENU-42")
    chan.send(b"exit\n")
    assert chan.recv_exit_status() == 0
    client.close()
    session = wait_for_sessions(testbed, login.name)[0]
    assert session["target"] == "web01" and session["kind"] == "shell"


def test_menu_without_a_terminal_lists_targets_and_runs_nothing(testbed):
    login = testbed.user("shell,exec")
    result = ssh(testbed.port, login, login.name, "id")
    assert result.returncode == 1
    assert b"no target given" in result.stderr and b"web01" in result.stderr and result.stdout == b""


def test_menu_quit_ends_the_connection_without_a_session(testbed):
    login = testbed.user("shell")
    client = paramiko_client(testbed.port, login, login.name)
    chan = client.invoke_shell(term="xterm")
    read_until(chan, b"filter:")
    chan.send(b"q")
    assert chan.recv_exit_status() == 0
    client.close()
    assert [s for s in testbed.admin().list_sessions() if s["user"] == login.name] == []


async def _connection_packets_seen(testbed, login, cipher: str) -> tuple[bytes, list[int]]:
    received: list[int] = []
    async with asyncssh.connect("127.0.0.1", testbed.port, username=f"{login.name}:web01",
                                password=login.password, known_hosts=None, client_keys=None, agent_path=None,
                                config=None, encryption_algs=[cipher]) as conn:
        # Packets for the connection itself (an ignore among them) are logged by the connection.
        conn.log_received_packet = lambda pkttype, *_: received.append(pkttype)
        result = await asyncio.wait_for(conn.run("for i in 1 2 3 4 5; do echo $i; sleep 0.05; done",
                                                 encoding=None), 30)
    return result.stdout, received


@pytest.mark.parametrize("cipher, ignores_expected", [
    ("aes128-gcm@openssh.com", False), ("chacha20-poly1305@openssh.com", False),
    ("aes128-ctr", True),  # not an AEAD cipher: asyncssh's rule stands (and shows the check can see them)
])
def test_the_gateway_sends_no_ignore_packet_before_each_packet(testbed, cipher, ignores_expected):
    # asyncssh pads every packet with an SSH_MSG_IGNORE, a CBC countermeasure that AEAD ciphers do
    # not need and that doubles the packets sent (bastion/ssh/asyncssh_fastpath.py).
    login = testbed.user("exec")
    stdout, received = asyncio.run(_connection_packets_seen(testbed, login, cipher))
    assert stdout == b"1\n2\n3\n4\n5\n"
    assert (asyncssh.constants.MSG_IGNORE in received) is ignores_expected, received


SLOW_READ_BYTES = 256 << 20
SLOW_READ_BOUND = 64 << 20


def test_a_slow_reader_of_bulk_output_keeps_gateway_memory_bounded(testbed, tmp_path):
    """The target sends faster than the client reads: the gateway pauses the target's channel and resumes
    it many times a second, and must hold no more than a window for it however often it does."""
    if testbed.backend != "sqlite":
        pytest.skip("the memory bound does not depend on the database: measured once, on SQLite")
    from tests.support.memory import RssSampler, write_big_file

    login = testbed.user("exec", key=True)
    source = tmp_path / "bulk.bin"
    write_big_file(source, SLOW_READ_BYTES)
    os.chmod(tmp_path, 0o755)
    received = 0
    with RssSampler(testbed.gateway.process.pid) as rss:
        client = subprocess.Popen(["ssh", "-p", str(testbed.port), *COMMON, *login.options(), "-T",
                                   f"{login.name}:web01@127.0.0.1", "cat", str(source)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                  env=login.env(), start_new_session=True)
        try:
            assert client.stdout is not None
            while piece := client.stdout.read1(64 * 1024):
                received += len(piece)
                time.sleep(0.0005)  # at most 128 MiB/s: slower than the target sends
            assert client.wait(timeout=120) == 0
        finally:
            client.kill()
            client.wait(timeout=10)
    print(f"\nslow reader: gateway RSS {rss.baseline >> 20} MiB before, growth {rss.growth / (1 << 20):.1f} MiB "
          f"over {rss.samples} samples")
    assert received == SLOW_READ_BYTES
    assert rss.samples > 10
    # asyncssh credited the target with held bytes at each resume: the gateway grew by hundreds of MiB.
    assert rss.growth < SLOW_READ_BOUND, f"gateway grew by {rss.growth >> 20} MiB"
