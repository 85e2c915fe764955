"""The real ssh-keygen and ssh use the C soft security key; an asyncssh server sees the flags and counters chosen."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from tests.support.sk_provider import SoftSkState, provider_env
from tests.support.softkey import UP, UV

KINDS = {"ed25519-sk": "sk-ssh-ed25519@openssh.com", "ecdsa-sk": "sk-ecdsa-sha2-nistp256@openssh.com"}


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus agents, askpass and any BASTION_SOFTSK_* setting, plus extra."""
    env = {k: v for k, v in provider_env().items() if not k.startswith("SSH_") and k != "DISPLAY"}
    env.update(extra)
    return env


def keygen(lib: Path | None, key: Path, kind: str, *options: str, env: dict[str, str]) -> str:
    """Enroll with ssh-keygen; lib None means "take the provider from $SSH_SK_PROVIDER"."""
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key), "-C", key.name]
    args += ["-w", str(lib)] if lib else []
    for option in options:
        args += ["-O", option]
    subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=30)
    return key.with_suffix(".pub").read_text()


async def ssh_login(lib: Path | str, key: Path, port: int, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the real ssh client with the provider; returns (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "PreferredAuthentications=publickey", "-o", f"SecurityKeyProvider={lib}", "-i", str(key),
        "-p", str(port), "alice@127.0.0.1", "true",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


def askpass(tmp_path: Path, pin: str) -> dict[str, str]:
    """What ssh needs to ask for a verify-required key's PIN without a terminal."""
    script = tmp_path / f"askpass-{pin}.sh"
    script.write_text(f"#!/bin/sh\necho {pin}\n")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [(), ("verify-required",)], ids=["touch", "verify-required"])
def test_ssh_keygen_enrolls(softsk_lib, tmp_path, kind, options):
    state = SoftSkState(tmp_path / "state")
    public = keygen(softsk_lib, tmp_path / "key", kind, *options, env=clean_env(**state.env()))
    assert public.split()[0] == KINDS[kind]
    assert asyncssh.import_public_key(public).algorithm.decode() == KINDS[kind]
    [enroll] = state.log()
    assert enroll["op"] == "enroll" and enroll["application"] == "ssh:"
    assert enroll["flags"] == ("0x05" if options else "0x01")  # verify-required adds SSH_SK_USER_VERIFICATION_REQD


@pytest.mark.parametrize("kind", KINDS)
async def test_real_ssh_carries_chosen_flags_and_counters(softsk_lib, tmp_path, sk_server_factory, kind):
    state = SoftSkState(tmp_path / "state")
    key = tmp_path / "key"
    server = await sk_server_factory(keygen(softsk_lib, key, kind, env=clean_env(**state.env())))
    env = clean_env()  # no BASTION_SOFTSK_* at all: the state dir baked into the key handle steers signing

    state.set_flags(UP | UV)
    state.set_counter(41)
    assert (await ssh_login(softsk_lib, key, server.port, env))[:2] == (0, "ok\n")
    state.set_flags(None)  # back to what a real key reports for a touch-required key: UP
    assert (await ssh_login(softsk_lib, key, server.port, env))[0] == 0
    state.set_counter(5)  # the counter goes backwards: on the wire as chosen (refusing it is Bastion's job)
    assert (await ssh_login(softsk_lib, key, server.port, env))[0] == 0

    wire = [(s.algorithm, s.flags, s.counter, ok) for s, ok in server.log.entries]
    assert wire == [(KINDS[kind], UP | UV, 42, True), (KINDS[kind], UP, 43, True), (KINDS[kind], UP, 6, True)]
    assert server.logins == ["alice"] * 3
    assert state.counter == 6
    assert [(e["flags"], e["counter"], e["counter_source"]) for e in state.signatures()] == \
        [("0x05", "42", "file"), ("0x01", "43", "file"), ("0x01", "6", "file")]


async def test_environment_reaches_provider_through_ssh_sk_helper(softsk_lib, tmp_path, sk_server_factory):
    key = tmp_path / "key"
    server = await sk_server_factory(keygen(softsk_lib, key, "ed25519-sk", env=clean_env()))  # no state dir
    counter_file = tmp_path / "counter"
    counter_file.write_text("99\n")

    env = clean_env(BASTION_SOFTSK_FLAGS="0x05", BASTION_SOFTSK_COUNTER="7")
    assert (await ssh_login(softsk_lib, key, server.port, env))[0] == 0
    env = clean_env(BASTION_SOFTSK_COUNTER_FILE=str(counter_file), BASTION_SOFTSK_LOG=str(tmp_path / "log"))
    assert (await ssh_login(softsk_lib, key, server.port, env))[0] == 0

    assert [(s.flags, s.counter, ok) for s, ok in server.log.entries] == [(UP | UV, 7, True), (UP, 100, True)]
    assert counter_file.read_text() == "100\n"
    assert "counter=100 counter_source=file" in (tmp_path / "log").read_text()


async def test_provider_from_ssh_sk_provider_environment(softsk_lib, tmp_path, sk_server_factory):
    state = SoftSkState(tmp_path / "state")
    env = clean_env(SSH_SK_PROVIDER=str(softsk_lib), **state.env())
    key = tmp_path / "key"
    server = await sk_server_factory(keygen(None, key, "ed25519-sk", env=env))
    # ssh itself ignores $SSH_SK_PROVIDER (only ssh-keygen and ssh-add read it) unless told to expand it.
    assert (await ssh_login("$SSH_SK_PROVIDER", key, server.port, env))[0] == 0
    assert [(s.flags, s.counter) for s in server.log.signatures] == [(UP, 1)]


async def test_no_presence_is_refused_by_asyncssh(softsk_lib, tmp_path, sk_server_factory):
    state = SoftSkState(tmp_path / "state")
    key = tmp_path / "key"
    server = await sk_server_factory(keygen(softsk_lib, key, "ecdsa-sk", env=clean_env(**state.env())))
    state.set_flags(0x00)
    status, _, err = await ssh_login(softsk_lib, key, server.port, clean_env())
    assert status == 255 and "Permission denied" in err
    assert [(s.flags, s.counter, ok) for s, ok in server.log.entries] == [(0x00, 1, False)]
    assert server.logins == []


async def test_verify_required_key_asks_ssh_for_the_pin(softsk_lib, tmp_path, sk_server_factory):
    state = SoftSkState(tmp_path / "state")
    key = tmp_path / "key"
    public = keygen(softsk_lib, key, "ecdsa-sk", "verify-required", env=clean_env(**state.env()))
    server = await sk_server_factory(public)
    state.set_pin("123456")

    status, _, _ = await ssh_login(softsk_lib, key, server.port, clean_env(**askpass(tmp_path, "000000")))
    assert status == 255 and server.log.entries == []  # wrong PIN: the device never signs
    status, _, _ = await ssh_login(softsk_lib, key, server.port, clean_env(**askpass(tmp_path, "123456")))
    assert status == 0
    assert [(s.flags, ok) for s, ok in server.log.entries] == [(UP | UV, True)]  # a PIN makes it a UV assertion
    assert [e["op"] for e in state.log()].count("sign") >= 2  # the refusals ("pin-required") are logged too


async def test_refusing_device_fails_the_login(softsk_lib, tmp_path, sk_server_factory):
    state = SoftSkState(tmp_path / "state")
    key = tmp_path / "key"
    server = await sk_server_factory(keygen(softsk_lib, key, "ed25519-sk", env=clean_env(**state.env())))
    state.refuse()
    status, _, err = await ssh_login(softsk_lib, key, server.port, clean_env())
    assert status == 255 and "signing failed" in err
    assert server.log.entries == []
    state.refuse(False)
    assert (await ssh_login(softsk_lib, key, server.port, clean_env()))[0] == 0


async def test_resident_key_downloads_and_logs_in(softsk_lib, tmp_path, sk_server_factory):
    state = SoftSkState(tmp_path / "state")
    env = clean_env(**state.env())
    public = keygen(softsk_lib, tmp_path / "key", "ed25519-sk", "resident", "user=alice", env=env)
    server = await sk_server_factory(public)

    download = tmp_path / "download"
    download.mkdir()
    subprocess.run(["ssh-keygen", "-K", "-w", str(softsk_lib), "-N", ""], cwd=download, env=env,
                   stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=30)
    fetched = download / "id_ed25519_sk_rk_alice"
    assert fetched.with_suffix(".pub").read_text().split()[:2] == public.split()[:2]
    assert (await ssh_login(softsk_lib, fetched, server.port, clean_env()))[0] == 0
    assert [s.counter for s in server.log.signatures] == [1]


def test_build_is_cached_by_source_hash(softsk_lib):
    from tests.support.sk_provider import build

    assert build(softsk_lib.parent) == softsk_lib
    assert os.access(softsk_lib, os.R_OK)
