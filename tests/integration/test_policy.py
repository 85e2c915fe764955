"""Global policy changed while the gateway runs: from the console and the CLI, applied live, audited, guarded."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from sqlalchemy import delete

from bastion.globalpolicy import REFRESH_SECONDS
from bastion.recordings import list_audit
from bastion.store.models import PolicySetting
from tests.support.clients import paramiko_client, read_until, ssh
from tests.support.console import ConsoleClient
from tests.support.recordings import bastion_cli, wait_for_sessions


def staff(testbed, role: str):
    return testbed.user(None, totp=True, prefix=role[:2], roles=(role,))


def policy_events(testbed, actor: str) -> list[dict]:
    events = testbed.directory.call(lambda s: list_audit(s, "admin.policy", 2000, "test"))
    return [e for e in events if e["actor"] == actor]


@pytest.fixture(autouse=True)
def no_policy_left_behind(testbed):
    """The gateway is shared by every test: whatever a test changed is dropped, even when it failed."""
    yield

    async def clear(services) -> int:
        async with services.db() as db, db.begin():
            return (await db.execute(delete(PolicySetting))).rowcount

    if testbed.directory.call(clear):
        time.sleep(REFRESH_SECONDS + 1)  # the gateway drops its copy at its next refresh


async def admin_console(testbed, port: int | None = None) -> tuple[ConsoleClient, str]:
    admin = staff(testbed, "admin")
    console = ConsoleClient(port or testbed.port)
    await console.login(admin.name, admin.password, admin.totp_secret, level=2)
    return console, admin.name


async def settings(console: ConsoleClient) -> dict[str, dict]:
    status, text, _ = await console.get("/api/v1/admin/policy")
    assert status == 200
    return {row["name"]: row for row in json.loads(text)}


async def test_a_console_change_applies_to_the_next_login_and_is_audited_before_and_after(testbed):
    console, admin = await admin_console(testbed)
    alice = testbed.user("exec")
    async with console:
        assert (await settings(console))["auth.lockout_threshold"]["value"] == 5
        status, row = await console.post("/api/v1/admin/policy/auth.lockout_threshold", {"value": 2})
        assert status == 200 and (row["value"], row["origin"], row["updated_by"]) == (2, "console", admin)
        # no restart: the second wrong password now locks the account
        wrong = replace(alice, password="not-the-password-123")
        for _ in range(2):
            assert ssh(testbed.port, wrong, f"{alice.name}:web01", "true").returncode == 255
        locked = ssh(testbed.port, alice, f"{alice.name}:web01", "echo should-not-run")
        assert locked.returncode == 255 and b"should-not-run" not in locked.stdout
        status, row = await console.post("/api/v1/admin/policy/auth.lockout_threshold/reset")
        assert status == 200 and (row["value"], row["origin"]) == (5, "default")
        status, data = await console.post("/api/v1/admin/policy/auth.lockout_threshold/reset")
        assert status == 409 and "no runtime change" in data["error"]
    events = policy_events(testbed, admin)
    assert [(e["type"], e["target"], e["details"]["before"], e["details"]["after"]) for e in reversed(events)] == [
        ("admin.policy.set", "auth.lockout_threshold", {"value": 5, "origin": "default"},
         {"value": 2, "origin": "console"}),
        ("admin.policy.reset", "auth.lockout_threshold", {"value": 2, "origin": "console"},
         {"value": 5, "origin": "default"})]
    testbed.admin().unlock_user(alice.name)


async def test_garbage_forged_requests_tokens_and_self_lockout_are_refused_and_change_nothing(testbed):
    console, admin = await admin_console(testbed)
    async with console:
        before = await settings(console)
        for name, value in (("console.admin_level", 7), ("console.admin_level", "2; drop table"),
                            ("auth.device_policy", "sometimes"), ("session.idle_timeout", -1),
                            ("session.idle_timeout", "nan"), ("publish.bytes_per_day", 1.5),
                            ("auth.lockout_threshold", True), ("auth.lockout_minutes", "x" * 64),
                            ("recording.retention_days", "\x1b[31m")):
            status, data = await console.post(f"/api/v1/admin/policy/{name}", {"value": value})
            assert status == 400 and data["error"].startswith(f"config error: {name}:"), (name, value, data)
        for body in ({}, {"value": None}, {"value": [1]}, {"value": {"a": 1}}, {"value": 1, "extra": 1}):
            status, _ = await console.post("/api/v1/admin/policy/session.idle_timeout", body)
            assert status == 400, body
        async with console.http.post(console.base + "/api/v1/admin/policy/session.idle_timeout", data=b"\xff{",
                                     headers={"Origin": console.origin, "X-CSRF-Token": console.csrf,
                                              "Content-Type": "application/json"}) as response:
            assert response.status == 400
        for path in ("/api/v1/admin/policy/ssh.window", "/api/v1/admin/policy/database_url",
                     "/api/v1/admin/policy/listen.x", "/api/v1/admin/policy/..%2f..%2fetc.passwd"):
            status, _ = await console.post(path, {"value": 1})
            assert status == 404, path
        for csrf in ("", "wrong-token"):
            status, data = await console.post("/api/v1/admin/policy/session.idle_timeout", {"value": 1}, csrf=csrf)
            assert status == 403 and "CSRF" in data["error"]
        status, _ = await console.post("/api/v1/admin/policy/session.idle_timeout", {"value": 1},
                                       headers={"Origin": "https://evil.example"})
        assert status == 403
        # changes that would lock this very admin out (a level-2 session, no bound device) need that first
        status, data = await console.post("/api/v1/admin/policy/console.admin_level", {"value": 3})
        assert status == 409 and "step up to level 3" in data["error"]
        status, data = await console.post("/api/v1/admin/policy/console.login_level", {"value": 3})
        assert status == 409
        status, data = await console.post("/api/v1/admin/policy/auth.device_policy", {"value": "required"})
        assert status == 409 and "bound device" in data["error"]
        # API tokens may read the policy but never change it
        created = bastion_cli(testbed.data_dir, "token", "create", "--user", admin, "--scope",
                              "admin:read,admin:write", "--ttl", "1h", "--json")
        bearer = {"Authorization": f"Bearer {json.loads(created.stdout)['token']}"}
        assert (await console.get("/api/v1/admin/policy", headers=bearer))[0] == 200
        async with console.http.post(console.base + "/api/v1/admin/policy/session.idle_timeout",
                                     json={"value": 1}, headers=bearer) as response:
            assert response.status == 404
        assert await settings(console) == before
    assert policy_events(testbed, admin) == []


async def test_raising_the_default_level_ends_live_sessions_below_it_and_demands_step_up(testbed):
    alice = testbed.user("shell,exec")
    client = paramiko_client(testbed.port, alice, f"{alice.name}:web01")
    chan = client.invoke_shell()
    chan.send(b"echo READY\n")
    read_until(chan, b"READY")
    console, _ = await admin_console(testbed)
    async with console:
        status, row = await console.post("/api/v1/admin/policy/auth.default_min_level", {"value": 2})
        assert status == 200 and row["value"] == 2
        chan.settimeout(20)
        data = b""
        while chunk := chan.recv(4096):
            data += chunk
        assert b"access revoked" in data + chan.recv_stderr(4096)
        client.close()
        assert wait_for_sessions(testbed, alice.name)[0]["end_reason"] == "access revoked or expired"
        refused = ssh(testbed.port, alice, f"{alice.name}:web01", "echo should-not-run")
        assert refused.returncode == 255 and b"should-not-run" not in refused.stdout
        status, _ = await console.post("/api/v1/admin/policy/auth.default_min_level/reset")
        assert status == 200
    again = ssh(testbed.port, alice, f"{alice.name}:web01", "echo back-at-level-1")
    assert again.stdout.strip() == b"back-at-level-1", again.stderr


def test_an_idle_timeout_set_from_the_cli_reaches_the_running_gateway(testbed):
    garbage = bastion_cli(testbed.data_dir, "policy", "set", "session.idle_timeout", "soon")
    assert garbage.returncode == 2 and b"config error: session.idle_timeout: must be a number" in garbage.stderr
    fixed = bastion_cli(testbed.data_dir, "policy", "set", "listen", "0.0.0.0:22")
    assert fixed.returncode == 1 and b"not a global policy setting" in fixed.stderr
    shown = {row["name"]: row for row in json.loads(bastion_cli(testbed.data_dir, "policy", "show", "--json").stdout)}
    assert (shown["session.idle_timeout"]["value"], shown["session.idle_timeout"]["origin"]) == (0.0, "default")
    changed = bastion_cli(testbed.data_dir, "policy", "set", "session.idle_timeout", "0.05")  # 3 seconds
    assert changed.returncode == 0, changed.stderr
    shown = {row["name"]: row for row in json.loads(bastion_cli(testbed.data_dir, "policy", "show", "--json").stdout)}
    assert (shown["session.idle_timeout"]["value"], shown["session.idle_timeout"]["origin"]) == (0.05, "console")
    time.sleep(REFRESH_SECONDS + 1)  # the running gateway picks the change up from the database
    idle, busy = testbed.user("shell"), testbed.user("shell")
    clients = {}
    for login in (idle, busy):
        clients[login.name] = paramiko_client(testbed.port, login, f"{login.name}:web01")
        chan = clients[login.name].invoke_shell()
        chan.send(b"echo READY\n")
        read_until(chan, b"READY")
        clients[login.name] = (clients[login.name], chan)
    idle_chan, busy_chan = clients[idle.name][1], clients[busy.name][1]
    idle_chan.settimeout(20)
    data = b""
    started = time.monotonic()
    while time.monotonic() - started < 8:  # the busy one types every half second meanwhile
        busy_chan.send(b"echo tick\n")
        time.sleep(0.5)
        if idle_chan.recv_ready():
            chunk = idle_chan.recv(4096)
            data += chunk
            if not chunk:
                break
        if idle_chan.exit_status_ready() or idle_chan.closed:
            break
    data += idle_chan.recv(4096) if idle_chan.recv_ready() else b""
    assert b"idle for more than 0.05 minutes" in data + idle_chan.recv_stderr(4096)
    assert not busy_chan.closed and busy_chan.send(b"echo STILL-HERE\n")
    read_until(busy_chan, b"STILL-HERE")
    assert wait_for_sessions(testbed, idle.name)[0]["end_reason"] == "idle for more than 0.05 minutes"
    for client, _ in clients.values():
        client.close()
    reset = bastion_cli(testbed.data_dir, "policy", "reset", "session.idle_timeout")
    assert reset.returncode == 0 and b"session.idle_timeout = 0.0 (default)" in reset.stdout
