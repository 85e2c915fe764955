"""Multi-level admission through the gateway: factors in sequence, step-up, security keys, lockout."""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import subprocess
import time
from dataclasses import replace

import asyncssh
import pyotp
import pytest

from bastion.recordings import list_audit
from tests.support.clients import Login, paramiko_client, read_until, ssh
from tests.support.gateway import GatewayProcess
from tests.support.recordings import bastion_cli, wait_for_sessions
from tests.support.softkey import SoftAuthenticator, virtual_security_key

UP, UV = 0x01, 0x04
BANNERS = ["-o", "LogLevel=INFO"]  # OpenSSH shows authentication banners from INFO up


def audit(testbed, prefix: str, actor: str) -> list[dict]:
    return [e for e in testbed.directory.call(lambda s: list_audit(s, prefix, 2000, "test")) if e["actor"] == actor]


def only_session(testbed, user: str) -> dict:
    return wait_for_sessions(testbed, user)[0]


# --- sequencing with the real OpenSSH client --------------------------------------------------------------


def test_openssh_publickey_then_totp_reaches_level_2(testbed):
    target = testbed.target("lvl2", min_level=2)
    alice = testbed.user("exec", key=True, totp=True, target=target)
    result = ssh(testbed.port, replace(alice, password=None), f"{alice.name}:{target}", "echo in",
                 extra=["-v"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"in\n"
    assert b'Authenticated using "publickey" with partial success' in result.stderr
    session = only_session(testbed, alice.name)
    assert session["level"] == 2 and session["methods"] == ["publickey", "totp"]
    success = [e for e in audit(testbed, "auth.", alice.name) if e["type"] == "auth.success"][-1]
    assert success["details"]["level"] == 2 and success["details"]["methods"] == ["publickey", "totp"]


def test_openssh_password_then_totp_reaches_level_2(testbed):
    target = testbed.target("lvl2", min_level=2)
    alice = testbed.user("exec", totp=True, target=target)
    result = ssh(testbed.port, alice, f"{alice.name}:{target}", "true", extra=["-v"])
    assert result.returncode == 0, result.stderr
    assert b'Authenticated using "password" with partial success' in result.stderr
    assert only_session(testbed, alice.name)["methods"] == ["password", "totp"]


def test_level_1_target_needs_no_second_factor(testbed):
    alice = testbed.user("exec", totp=True)
    result = ssh(testbed.port, alice, f"{alice.name}:web01", "true", extra=["-v"])
    assert result.returncode == 0 and b"partial success" not in result.stderr
    assert only_session(testbed, alice.name)["level"] == 1


@pytest.mark.parametrize("where", ["target", "grant", "account"])
def test_every_demand_counts_and_below_it_there_is_no_silent_pass(testbed, where):
    if where == "target":
        target = testbed.target("demand", min_level=2)
        alice = testbed.user("exec", target=target)
    elif where == "grant":
        target = "web01"
        alice = testbed.user("exec", min_level=2)
    else:
        target = testbed.target("demand")
        testbed.admin().add_account(target, "bastiontest", generate=True, min_level=2)
        alice = testbed.user("exec", target=target, account="bastiontest")
        target = f"{target}:bastiontest"
    result = ssh(testbed.port, alice, f"{alice.name}:{target}", "echo should-not-run", extra=BANNERS)
    assert result.returncode == 255 and b"should-not-run" not in result.stdout
    assert b"needs authentication level 2" in result.stderr and b"TOTP" in result.stderr


def test_level_3_demand_the_client_cannot_meet_names_what_is_needed(testbed):
    target = testbed.target("lvl3", min_level=3)
    alice = testbed.user("exec", totp=True, target=target)
    result = ssh(testbed.port, alice, f"{alice.name}:{target}", "echo should-not-run", extra=BANNERS)
    assert result.returncode == 255 and b"should-not-run" not in result.stdout
    assert b"level 3" in result.stderr and b"user verification" in result.stderr


# --- TOTP --------------------------------------------------------------------------------------------------


async def _kbdint_login(port: int, login: Login, spec: str, code: str) -> int:
    class Answers(asyncssh.SSHClient):
        answered = False

        def kbdint_auth_requested(self):
            return ""

        def kbdint_challenge_received(self, name, instructions, lang, prompts):
            if self.answered:
                return None  # one try per connection, as a person would
            self.answered = True
            return [code for _ in prompts]

    try:
        async with asyncssh.connect("127.0.0.1", port, username=spec, password=login.password, known_hosts=None,
                                    client_keys=None, agent_path=None, config=None, client_factory=Answers,
                                    preferred_auth="password,keyboard-interactive") as conn:
            return (await conn.run("true")).exit_status
    except asyncssh.PermissionDenied:
        return -1


def test_totp_code_is_accepted_once_and_drift_is_one_step(testbed):
    target = testbed.target("totp", min_level=2)
    alice = testbed.user("exec", totp=True, target=target)
    totp = pyotp.TOTP(alice.totp_secret)
    # "One step back" and "already used" hold within one 30 s step: a login that crossed into the next
    # made the code two steps old (refused as wrong, not as replayed) on a slow CI run. Start early in a step.
    into_step = time.time() % totp.interval
    if into_step > totp.interval / 3:
        time.sleep(totp.interval - into_step + 0.2)
    now = dt.datetime.now(dt.timezone.utc)
    spec = f"{alice.name}:{target}"
    previous = totp.at(now - dt.timedelta(seconds=30))
    assert asyncio.run(_kbdint_login(testbed.port, alice, spec, previous)) == 0          # one step back: ok
    assert asyncio.run(_kbdint_login(testbed.port, alice, spec, previous)) == -1         # replay: refused
    assert asyncio.run(_kbdint_login(testbed.port, alice, spec, totp.at(now - dt.timedelta(seconds=90)))) == -1
    assert asyncio.run(_kbdint_login(testbed.port, alice, spec, "12345x")) == -1
    reasons = [e["details"]["reason"] for e in audit(testbed, "auth.failure", alice.name)]
    assert "code already used" in reasons and "wrong code" in reasons
    testbed.admin().unlock_user(alice.name)


# --- FIDO2 security keys (software authenticator at the device boundary) ----------------------------------


async def _sk_login(port: int, spec: str, password: str | None, sk_key, extra_keys=()) -> tuple[int, object]:
    try:
        async with asyncssh.connect("127.0.0.1", port, username=spec, password=password, known_hosts=None,
                                    client_keys=[*extra_keys, sk_key], agent_path=None, config=None,
                                    preferred_auth="password,publickey" if password else "publickey") as conn:
            result = await conn.run("true")
            return result.exit_status, None
    except asyncssh.PermissionDenied as exc:
        return -1, exc


def _sk_user(testbed, target: str, alg: str = "sk-ssh-ed25519@openssh.com"):
    authenticator = SoftAuthenticator()
    with virtual_security_key(authenticator):
        sk_key = asyncssh.generate_private_key(alg, application="ssh:")
    alice = testbed.user("exec", target=target)
    testbed.admin().add_user_key(alice.name, sk_key.export_public_key().decode())
    return alice, sk_key, authenticator


@pytest.mark.parametrize("alg", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"])
def test_security_key_presence_gives_level_2_and_verification_level_3(testbed, alg):
    level2, level3 = testbed.target("sk2", min_level=2), testbed.target("sk3", min_level=3)
    alice, sk_key, device = _sk_user(testbed, level2, alg)
    testbed.admin().add_grant(user=alice.name, target=level3, account="root", actions=["exec"])
    with virtual_security_key(device):
        device.next_assertion(flags=UP)
        assert asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level2}", alice.password, sk_key))[0] == 0
        device.next_assertion(flags=UP)
        assert asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level3}", alice.password, sk_key))[0] == -1
        device.next_assertion(flags=UP | UV)
        assert asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level3}", alice.password, sk_key))[0] == 0
    sessions = wait_for_sessions(testbed, alice.name, count=2)
    assert [(s["level"], s["methods"]) for s in sessions] == [(2, ["password", "sk"]), (3, ["password", "sk-uv"])]


def test_security_key_alone_is_only_level_1(testbed):
    level2 = testbed.target("sk2", min_level=2)
    alice, sk_key, device = _sk_user(testbed, level2)
    with virtual_security_key(device):
        device.next_assertion(flags=UP | UV)
        status, _ = asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level2}", None, sk_key))
    assert status == -1


def test_security_key_without_presence_or_with_a_replayed_counter_is_refused(testbed):
    level2 = testbed.target("sk2", min_level=2)
    alice, sk_key, device = _sk_user(testbed, level2)
    with virtual_security_key(device):
        device.next_assertion(flags=UP, counter=10)
        assert asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level2}", alice.password, sk_key))[0] == 0
        device.next_assertion(flags=0x00, counter=11)
        assert asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level2}", alice.password, sk_key))[0] == -1
        device.next_assertion(flags=UP, counter=10)
        assert asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level2}", alice.password, sk_key))[0] == -1
        device.next_assertion(flags=UP, counter=5)
        assert asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level2}", alice.password, sk_key))[0] == -1
        device.next_assertion(flags=UP, counter=12)
        assert asyncio.run(_sk_login(testbed.port, f"{alice.name}:{level2}", alice.password, sk_key))[0] == 0
    reasons = [e["details"]["reason"] for e in audit(testbed, "auth.failure", alice.name)]
    assert reasons.count("security key counter did not increase (cloned key?)") == 2
    testbed.admin().unlock_user(alice.name)


def test_openssh_client_with_a_verify_required_key_reaches_level_3(testbed, tmp_path):
    from tests.support.sk_provider import ProviderUnavailable, SoftSkState, build

    try:
        provider = build(tmp_path / "provider")
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))
    state = SoftSkState(tmp_path / "state")
    key = tmp_path / "id_sk"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519-sk", "-w", str(provider), "-N", "", "-O", "verify-required",
                    "-f", str(key)], check=True, env={**state.env(), "SSH_ASKPASS_REQUIRE": "never"},
                   stdin=subprocess.DEVNULL, capture_output=True)
    level3 = testbed.target("sk3", min_level=3)
    alice = testbed.user("exec", key=True, target=level3)
    testbed.admin().add_user_key(alice.name, key.with_suffix(".pub").read_text())
    login = replace(alice, password=None, keys=(key,), sk_provider=provider,
                    extra_env=tuple(state.env().items()) + (("BASTION_TEST_SK_PIN", "1234"),))
    result = ssh(testbed.port, login, f"{alice.name}:{level3}", "echo level3", extra=["-v"])
    assert result.returncode == 0, result.stderr
    assert only_session(testbed, alice.name)["methods"] == ["publickey", "sk-uv"]


# --- in-band step-up from the menu -----------------------------------------------------------------------


def test_menu_target_above_the_login_level_steps_up_with_totp_in_the_terminal(testbed):
    target = testbed.target("menu2", min_level=2)
    alice = testbed.user("shell", totp=True, target=target)
    client = paramiko_client(testbed.port, alice, alice.name)
    chan = client.invoke_shell(term="xterm")
    read_until(chan, b"filter:")
    chan.send(b"\r")
    read_until(chan, b"Verification code: ")
    chan.send(pyotp.TOTP(alice.totp_secret).now().encode() + b"\r")
    chan.send(b"echo STEPPED-$((1+1))\n")
    screen = read_until(chan, b"STEPPED-2")
    assert pyotp.TOTP(alice.totp_secret).now().encode() not in screen  # the code is not echoed
    chan.send(b"exit\n")
    chan.recv_exit_status()
    client.close()
    session = only_session(testbed, alice.name)
    assert session["level"] == 2 and session["methods"] == ["password", "totp"]
    assert any(e["type"] == "auth.stepup" for e in audit(testbed, "auth.", alice.name))


def test_menu_step_up_that_cannot_be_met_says_what_is_needed(testbed):
    target = testbed.target("menu3", min_level=3)
    alice = testbed.user("shell", totp=True, target=target)
    client = paramiko_client(testbed.port, alice, alice.name)
    chan = client.invoke_shell(term="xterm")
    read_until(chan, b"filter:")
    chan.send(b"\r")
    assert chan.recv_exit_status() == 1
    message = chan.recv_stderr(65536)
    client.close()
    assert b"level 3" in message and b"user verification" in message
    assert wait_for_sessions(testbed, alice.name, count=0) == []


# --- lockout, rate limit, timing ---------------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_account_and_unlock_restores_it(testbed):
    alice = testbed.user("exec")
    wrong = replace(alice, password="not-the-password-123")
    for _ in range(5):
        assert ssh(testbed.port, wrong, f"{alice.name}:web01", "true").returncode == 255
    locked = ssh(testbed.port, alice, f"{alice.name}:web01", "echo should-not-run")
    assert locked.returncode == 255 and b"should-not-run" not in locked.stdout
    listing = bastion_cli(testbed.data_dir, "user", "list", "--json")
    assert b'"locked"' in listing.stdout
    assert any(e["type"] == "auth.lockout" for e in audit(testbed, "auth.", alice.name))
    assert bastion_cli(testbed.data_dir, "user", "unlock", alice.name).returncode == 0
    assert ssh(testbed.port, alice, f"{alice.name}:web01", "true").returncode == 0


def test_more_factors_needed_never_counts_towards_lockout(testbed):
    target = testbed.target("lvl2", min_level=2)
    alice = testbed.user("exec", totp=True, target=target)
    for _ in range(6):  # each gets partial success for the password, then stops without giving a code
        result = ssh(testbed.port, alice, f"{alice.name}:{target}", "true",
                     extra=["-o", "PreferredAuthentications=password"])
        assert result.returncode == 255
    assert ssh(testbed.port, alice, f"{alice.name}:{target}", "true").returncode == 0


def test_source_rate_limit_refuses_a_source_after_its_failures(testbed):
    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_AUTH_RATE_LIMIT_FAILURES": "3",
                                                    "BASTION_AUTH_LOCKOUT_THRESHOLD": "1000"}).start()
    try:
        alice = testbed.user("exec")
        wrong = replace(alice, password="not-the-password-123")
        for _ in range(3):
            ssh(gateway.port, wrong, f"{alice.name}:web01", "true")
        refused = ssh(gateway.port, alice, f"{alice.name}:web01", "true")
        other_source = ssh(gateway.port, alice, f"{alice.name}:web01", "true", extra=["-b", "127.0.0.2"])
    finally:
        gateway.stop()
    assert refused.returncode == 255
    assert other_source.returncode == 0, other_source.stderr
    assert any(e["details"].get("reason") == "source rate limited" for e in audit(testbed, "auth.failure", alice.name))


async def _time_password_failure(port: int, user: str, password: str) -> float:
    start = time.perf_counter()
    try:
        async with asyncssh.connect("127.0.0.1", port, username=f"{user}:web01", password=password,
                                    known_hosts=None, client_keys=None, agent_path=None, config=None,
                                    preferred_auth="password"):
            pass
    except asyncssh.PermissionDenied:
        pass
    return time.perf_counter() - start


def test_unknown_and_known_users_cannot_be_told_apart_by_timing(testbed):
    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_AUTH_LOCKOUT_THRESHOLD": "1000",
                                                    "BASTION_AUTH_RATE_LIMIT_FAILURES": "100000"}).start()
    known = testbed.user("exec")
    try:
        known_times, unknown_times = [], []
        for index in range(16):  # interleaved, so drift hits both alike
            known_times.append(asyncio.run(_time_password_failure(gateway.port, known.name, f"wrong-{index}-pw")))
            unknown_times.append(asyncio.run(_time_password_failure(gateway.port, f"ghost{index}", "wrong-pw-x")))
    finally:
        gateway.stop()
        testbed.admin().unlock_user(known.name)
    ratio = statistics.median(known_times) / statistics.median(unknown_times)
    # generous: a real difference (a skipped argon2 hash, ~50-150 ms) would show as a ratio of 2 or more
    assert 0.67 < ratio < 1.5, (ratio, known_times, unknown_times)


def _paramiko_key_then_totp(testbed, login: Login, code_for):
    """paramiko's own two-step login: public key (partial success), then keyboard-interactive."""
    import paramiko

    transport = paramiko.Transport(("127.0.0.1", testbed.port))
    transport.start_client(timeout=10)
    key = paramiko.Ed25519Key.from_private_key_file(str(login.key))
    assert transport.auth_publickey(f"{login.name}:web01", key) == ["keyboard-interactive"]
    assert not transport.is_authenticated()
    # paramiko sends a fresh "ssh-userauth" service request before this method, as it does before every one.
    transport.auth_interactive(f"{login.name}:web01", lambda title, text, prompts: [code_for() for _ in prompts])
    return transport


def test_paramiko_completes_key_then_totp(testbed):
    alice = testbed.user("exec", key=True, totp=True, min_level=2)
    transport = _paramiko_key_then_totp(testbed, alice, lambda: pyotp.TOTP(alice.totp_secret).now())
    try:
        assert transport.is_authenticated()
        channel = transport.open_session()
        channel.exec_command("echo level-two")
        assert channel.makefile().read() == b"level-two\n"
    finally:
        transport.close()


def test_paramiko_key_then_a_wrong_code_is_refused(testbed):
    import paramiko

    alice = testbed.user("exec", key=True, totp=True, min_level=2)
    with pytest.raises(paramiko.AuthenticationException):
        _paramiko_key_then_totp(testbed, alice, lambda: "000000" if pyotp.TOTP(alice.totp_secret).now() != "000000"
                                else "111111").close()
