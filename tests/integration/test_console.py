"""The console and its API on the gateway's own port: login levels, CSRF, tokens, escaping, terminal, kill."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pyotp
import pytest

from tests.support.clients import paramiko_client, read_until, ssh
from tests.support.console import ConsoleClient
from tests.support.gateway import GatewayProcess
from tests.support.recordings import bastion_cli, export_events, output_text, wait_for_sessions

XSS = '<img src=x onerror=alert(1)><script>alert("x")</script>'


def staff(testbed, role: str) -> tuple[str, str, str]:
    login = testbed.user(None, totp=True, prefix=role[:2], roles=(role,))
    return login.name, login.password, login.totp_secret


async def test_login_levels_and_session_rotation(testbed):
    alice = testbed.user("shell", totp=True)
    async with ConsoleClient(testbed.port) as console:
        status, data = await console.post("/api/v1/login/password", {"username": alice.name,
                                                                     "password": alice.password, "level": 2})
        assert status == 200 and data["next"] == "choose" and "totp" in data["choices"]
        half = console.cookie()
        status, _ = await console.post("/api/v1/login/totp", {"code": "000000"})
        assert status == 401
        status, data = await console.post("/api/v1/login/totp", {"code": pyotp.TOTP(alice.totp_secret).now()})
        assert status == 200 and data["next"] == "done" and data["level"] == 2
        full = console.cookie()
        assert full and full != half  # rotated at login
        status, text, _ = await console.get("/api/v1/me")
        assert status == 200 and json.loads(text)["methods"] == ["password", "totp"]
    async with ConsoleClient(testbed.port) as stale:
        stale.http.cookie_jar.update_cookies({"__Host-bastion": half})
        assert (await stale.get("/api/v1/me"))[0] == 401


async def test_wrong_password_and_unknown_user_look_the_same(testbed):
    alice = testbed.user("shell")
    async with ConsoleClient(testbed.port) as console:
        wrong = await console.post("/api/v1/login/password", {"username": alice.name, "password": "nope-nope-nope"})
        ghost = await console.post("/api/v1/login/password", {"username": "ghost-x", "password": "nope-nope-nope"})
    assert wrong == ghost == (401, {"error": "wrong user name or password"})
    testbed.admin().unlock_user(alice.name)


async def test_admin_pages_need_the_admin_level_and_step_up(testbed):
    name, password, secret = staff(testbed, "admin")
    async with ConsoleClient(testbed.port) as console:
        await console.login(name, password)  # level 1 only
        status, data = await console.post("/api/v1/admin/users", {"name": "never-made"})
        assert status == 403 and data == {"error": "step-up required", "level": 2}
        status, _, headers = await console.get("/admin")
        assert status == 303 and headers["Location"].startswith("/login?level=2")
        status, data = await console.post("/api/v1/login/stepup", {"level": 2})
        assert status == 200 and data["choices"] == ["totp"]
        before = console.cookie()
        status, data = await console.post("/api/v1/login/totp", {"code": pyotp.TOTP(secret).now()})
        assert status == 200 and data["level"] == 2 and console.cookie() != before  # rotated at step-up
        status, data = await console.post("/api/v1/admin/users", {"name": f"made-{testbed.backend}",
                                                                  "password": "correct-horse-made-battery"})
        assert status == 200, data
    assert any(u["name"] == f"made-{testbed.backend}" for u in testbed.admin().list_users())


async def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(testbed):
    name, password, secret = staff(testbed, "admin")
    async with ConsoleClient(testbed.port) as console:
        await console.login(name, password, secret, level=2)
        for csrf in ("", "wrong-token"):
            status, data = await console.post("/api/v1/admin/users", {"name": f"csrf-{testbed.backend}"}, csrf=csrf)
            assert status == 403 and "CSRF" in data["error"]
        status, data = await console.post("/api/v1/admin/users", {"name": f"csrf-{testbed.backend}"},
                                          headers={"Origin": "https://evil.example"})
        assert status == 403
    assert not any(u["name"] == f"csrf-{testbed.backend}" for u in testbed.admin().list_users())


async def test_no_open_redirects(testbed):
    alice = testbed.user("shell")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
        async with ConsoleClient(testbed.port) as console:
            status, data = await console.post("/api/v1/login/password", {"username": alice.name,
                                                                         "password": alice.password, "next": target})
            assert status == 200 and data["redirect"] == "/"


async def test_user_controlled_text_is_escaped_everywhere(testbed):
    name, password, secret = staff(testbed, "auditor")
    alice = testbed.user("exec")
    ssh(testbed.port, alice, f"{alice.name}:web01", f"echo '{XSS}'")
    ssh(testbed.port, alice, XSS, "true")  # a hostile login name lands in the audit log
    wait_for_sessions(testbed, alice.name)
    async with ConsoleClient(testbed.port) as console:
        await console.login(name, password, secret, level=2)
        for page in (f"/audit/sessions?user={alice.name}", "/audit/log?type=auth.failure", "/audit/log"):
            status, text, _ = await console.get(page)
            assert status == 200
            assert "<img src=x" not in text and "<script>alert" not in text
        status, text, _ = await console.get(f"/audit/sessions?user={alice.name}")
        assert "&lt;img src=x onerror=alert(1)&gt;" in text


async def test_api_tokens_scoped_expired_and_revoked(testbed):
    name, _, _ = staff(testbed, "auditor")
    created = bastion_cli(testbed.data_dir, "token", "create", "--user", name, "--scope", "audit:read",
                          "--ttl", "1h", "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    short = json.loads(bastion_cli(testbed.data_dir, "token", "create", "--user", name, "--scope", "audit:read",
                                   "--ttl", "2s", "--json").stdout)
    refused = bastion_cli(testbed.data_dir, "token", "create", "--user", name, "--scope", "admin:write", "--ttl", "1h")
    assert refused.returncode == 1 and b"admin role" in refused.stderr
    async with ConsoleClient(testbed.port) as console:
        bearer = {"Authorization": f"Bearer {token['token']}"}
        assert (await console.get("/api/v1/audit/sessions", headers=bearer))[0] == 200
        assert (await console.get("/api/v1/admin/users", headers=bearer))[0] == 404   # not in scope
        assert (await console.get("/audit/sessions", headers=bearer))[0] == 303        # pages need a session
        assert (await console.get("/api/v1/audit/sessions",
                                  headers={"Authorization": "Bearer bst_forged"}))[0] == 401
        time.sleep(2.5)
        assert (await console.get("/api/v1/audit/sessions",
                                  headers={"Authorization": f"Bearer {short['token']}"}))[0] == 401
        assert bastion_cli(testbed.data_dir, "token", "revoke", str(token["id"])).returncode == 0
        assert (await console.get("/api/v1/audit/sessions", headers=bearer))[0] == 401


async def test_idle_sessions_end(testbed):
    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_CONSOLE_IDLE_TIMEOUT": "0.03"}).start()
    alice = testbed.user("shell")
    try:
        async with ConsoleClient(gateway.port) as console:
            await console.login(alice.name, alice.password)
            assert (await console.get("/api/v1/me"))[0] == 200
            await asyncio.sleep(2.5)
            assert (await console.get("/api/v1/me"))[0] == 401
    finally:
        gateway.stop()


async def test_web_terminal_goes_through_policy_and_is_recorded(testbed, tmp_path):
    alice = testbed.user("shell")
    async with ConsoleClient(testbed.port) as console:
        await console.login(alice.name, alice.password)
        ws = await console.http.ws_connect(f"{console.base}/api/v1/terminal/web01/root",
                                           headers={"Origin": console.origin})
        await ws.send_str(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
        await ws.send_bytes(b"echo WEB-$((20+22))\n")
        seen = b""
        deadline = time.monotonic() + 20
        while b"WEB-42" not in seen and time.monotonic() < deadline:
            message = await ws.receive(timeout=10)
            if message.type == aiohttp.WSMsgType.BINARY:
                seen += message.data
        await ws.send_bytes(b"exit\n")
        await ws.receive(timeout=10)
        await ws.close()
        denied = await console.http.ws_connect(f"{console.base}/api/v1/terminal/web01/nosuch",
                                               headers={"Origin": console.origin})
        first = await denied.receive(timeout=10)
        assert "no such target or access denied" in first.data
        await denied.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # cross-site websocket hijacking
            await console.http.ws_connect(f"{console.base}/api/v1/terminal/web01/root",
                                          headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
    assert b"WEB-42" in seen
    session = wait_for_sessions(testbed, alice.name)[0]
    _, events = export_events(testbed.data_dir, session["id"], tmp_path / "web.cast")
    assert "WEB-42" in output_text(events) and session["kind"] == "shell"


async def test_auditor_watches_and_terminates_a_live_ssh_session(testbed):
    name, password, secret = staff(testbed, "auditor")
    alice = testbed.user("shell")
    client = paramiko_client(testbed.port, alice, f"{alice.name}:web01")
    chan = client.invoke_shell()
    chan.send(b"echo READY\n")
    data = read_until(chan, b"READY")
    deadline = time.monotonic() + 20
    session = wait_for_sessions(testbed, alice.name, ended=False)[0]
    async with ConsoleClient(testbed.port) as console:
        await console.login(name, password, secret, level=2)
        ws = await console.http.ws_connect(f"{console.base}/api/v1/audit/sessions/{session['id']}/live",
                                           headers={"Origin": console.origin})
        start = json.loads((await ws.receive(timeout=10)).data)
        assert start["type"] == "start" and start["user"] == alice.name
        chan.send(b"echo LIVE-$((3*3))\n")
        watched = b""
        while b"LIVE-9" not in watched and time.monotonic() < deadline + 20:
            message = await ws.receive(timeout=10)
            if message.type == aiohttp.WSMsgType.BINARY:
                watched += message.data
        await ws.send_bytes(b"echo VIEWER-TYPED\n")  # read-only: never reaches the target
        asked = time.monotonic()
        status, result = await console.post(f"/api/v1/audit/sessions/{session['id']}/terminate",
                                            {"reason": "policy violation"})
        assert status == 200, result
        chan.settimeout(10)
        rest = b""
        while not chan.exit_status_ready():
            chunk = chan.recv(4096)
            if not chunk:
                break
            rest += chunk
        ended_after = time.monotonic() - asked
        rest += chan.recv_stderr(4096)
        await ws.close()
    client.close()
    assert b"LIVE-9" in watched
    assert ended_after < 2.0
    assert b"policy violation" in rest and b"VIEWER-TYPED" not in data + rest
    ended = wait_for_sessions(testbed, alice.name)[0]
    assert "policy violation" in ended["end_reason"] or ended["end_reason"].startswith("terminated")


def test_openapi_document_describes_the_api(testbed):
    import ssl
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://localhost:{testbed.port}/api/v1/openapi.json", context=context) as reply:
        spec = json.loads(reply.read())
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/admin/users" in spec["paths"] and "post" in spec["paths"]["/api/v1/admin/users"]
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"


async def test_session_cookie_flags(testbed):
    alice = testbed.user("shell")
    async with ConsoleClient(testbed.port) as console:
        async with console.http.post(f"{console.base}/api/v1/login/password", headers={"Origin": console.origin},
                                     json={"username": alice.name, "password": alice.password}) as response:
            cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-bastion=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie, cookie
    assert "Domain" not in cookie and "Max-Age" not in cookie and "expires" not in cookie.lower()


async def test_device_certificate_proves_the_browser_under_a_required_policy(testbed, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    alice = testbed.user("shell")
    testbed.admin().set_user_policy(alice.name, "required")
    async with ConsoleClient(testbed.port) as console:
        status, data = await console.post("/api/v1/login/password", {"username": alice.name,
                                                                     "password": alice.password})
    assert status == 403 and "bound device" in data["error"]
    device = testbed.admin().add_device(alice.name, "laptop", issue_cert=True, keys_dir=testbed.data_dir / "keys")
    key, cert, _ = pkcs12.load_key_and_certificates(device["p12"], device["p12_password"].encode())
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    client_cert = (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    async with ConsoleClient(testbed.port, client_cert=client_cert) as console:   # pending: not yet
        status, _ = await console.post("/api/v1/login/password", {"username": alice.name, "password": alice.password})
    assert status == 403
    testbed.admin().set_device_status(device["id"], "approved")
    async with ConsoleClient(testbed.port, client_cert=client_cert) as console:
        status, data = await console.post("/api/v1/login/password", {"username": alice.name,
                                                                     "password": alice.password})
        assert status == 200, data
        me = json.loads((await console.get("/api/v1/me"))[1])
    assert me["device_id"] == device["id"]


async def test_pending_ssh_approvals_are_listed_for_their_owner_only(testbed):
    level3 = testbed.target("list-approval", min_level=3)
    alice = testbed.user("exec", target=level3)
    bob = testbed.user("exec")
    services = testbed.directory.services
    user_id = next(u for u in testbed.directory.run(_users(services)) if u[1] == alice.name)[0]
    token = testbed.directory.run(services.approvals.create(user_id, "0" * 36, level3, 3))
    async with ConsoleClient(testbed.port) as console:
        await console.login(alice.name, alice.password)
        status, text, _ = await console.get("/")
        assert status == 200 and level3 in text and "/approve/" in text
        assert (await console.get(f"/approve/{token}"))[0] == 200
    async with ConsoleClient(testbed.port) as console:
        await console.login(bob.name, bob.password)
        assert level3 not in (await console.get("/"))[1]
        assert (await console.get(f"/approve/{token}"))[0] == 404


async def _users(services):
    from sqlalchemy import select

    from bastion.store.models import User

    async with services.db() as db:
        return [(u.id, u.name) for u in (await db.execute(select(User))).scalars()]


async def test_free_text_fields_are_escaped_key_labels_and_termination_reasons(testbed):
    from sqlalchemy import select

    from bastion.store.models import Credential, User

    alice = testbed.user("shell")
    services = testbed.directory.services

    async def label_a_key():
        async with services.db() as db, db.begin():
            user = (await db.execute(select(User).where(User.name == alice.name))).scalar_one()
            db.add(Credential(user_id=user.id, kind="webauthn", public="AA", fingerprint="00", label=XSS[:64],
                              created_at=services.clock.now()))
    testbed.directory.run(label_a_key())
    client = paramiko_client(testbed.port, alice, f"{alice.name}:web01")
    chan = client.invoke_shell()
    session = wait_for_sessions(testbed, alice.name, ended=False)[0]
    name, password, secret = staff(testbed, "auditor")
    async with ConsoleClient(testbed.port) as console:
        await console.login(name, password, secret, level=2)
        status, _ = await console.post(f"/api/v1/audit/sessions/{session['id']}/terminate", {"reason": XSS})
        assert status == 200
        chan.recv_exit_status()
        client.close()
        wait_for_sessions(testbed, alice.name)
        status, text, _ = await console.get(f"/audit/sessions?user={alice.name}")
        assert status == 200 and "<img src=x" not in text and "&lt;img src=x" in text
    async with ConsoleClient(testbed.port) as console:
        await console.login(alice.name, alice.password)
        status, text, _ = await console.get("/me/security")
        assert status == 200 and "<img src=x" not in text and "&lt;img src=x" in text
