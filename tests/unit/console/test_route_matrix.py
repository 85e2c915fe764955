"""Every console route × every kind of caller gets the expected answer; a route without a rule fails here."""

from __future__ import annotations

import re

import asyncssh
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bastion.console.app import create_app
from bastion.console.render import SESSIONS, SERVICES
from bastion.console.routes import ROUTE_KEY
from bastion.console.websession import COOKIE
from bastion.publish.catalog import Catalog
from bastion.services import Services

# The rule each route must have. Written out by hand on purpose: a new route must be added here.
EXPECTED = {
    "GET /healthz": "public",
    "GET /static/{path}": "public",
    "GET /login": "public",
    "GET /api/v1/openapi.json": "public",
    "POST /api/v1/login/password": "public",
    "POST /api/v1/login/stepup": "user",
    "POST /api/v1/login/totp": "login",
    "POST /api/v1/login/webauthn/begin": "login",
    "POST /api/v1/login/webauthn/complete": "login",
    "POST /api/v1/logout": "login",
    "GET /": "user",
    "GET /me/security": "user",
    "GET /api/v1/me": "user",
    "GET /api/v1/me/targets": "user",
    "POST /api/v1/me/webauthn/register/begin": "user",
    "POST /api/v1/me/webauthn/register/complete": "user",
    "GET /terminal/{target}/{account}": "user",
    "GET /api/v1/terminal/{target}/{account}": "user-ws",
    "GET /approve/{token}": "user-object",
    "POST /api/v1/approvals/{token}/begin": "user-object",
    "POST /api/v1/approvals/{token}/complete": "user-object",
    "GET /audit/sessions": "auditor",
    "GET /audit/sessions/{session_id}": "auditor",
    "GET /audit/sessions/{session_id}/live": "auditor",
    "GET /audit/log": "auditor",
    "GET /audit/search": "auditor",
    "GET /api/v1/audit/search": "auditor",
    "GET /api/v1/audit/sessions": "auditor",
    "GET /api/v1/audit/sessions/{session_id}/cast": "auditor",
    "POST /api/v1/audit/sessions/{session_id}/terminate": "auditor",
    "GET /api/v1/audit/sessions/{session_id}/live": "auditor-ws",
    "GET /api/v1/audit/events": "auditor",
    "GET /api/v1/audit/export": "auditor",
    "GET /admin": "admin",
    "GET /api/v1/admin/users": "admin",
    "POST /api/v1/admin/users": "admin",
    "POST /api/v1/admin/users/{name}/{action}": "admin",
    "GET /api/v1/admin/targets": "admin",
    "POST /api/v1/admin/targets": "admin",
    "POST /api/v1/admin/targets/{name}/accounts": "admin",
    "GET /api/v1/admin/grants": "admin",
    "POST /api/v1/admin/grants": "admin",
    "POST /api/v1/admin/grants/{grant_id}/revoke": "admin",
    "GET /api/v1/admin/devices": "admin",
    "POST /api/v1/admin/devices": "admin",
    "GET /api/v1/admin/policy": "admin",
    "POST /api/v1/admin/policy/{setting}": "admin",
    "POST /api/v1/admin/policy/{setting}/reset": "admin",
    "POST /api/v1/admin/devices/{device_id}/{action}": "admin",
    # datasets: "user-dataset" is open to users, and the object answers: alice holds a grant on the sample
    # dataset, everyone else gets the 404 a dataset that does not exist gets.
    "GET /datasets": "user",
    "GET /datasets/{dataset}": "user-dataset",
    "GET /datasets/{dataset}/view": "user-dataset",
    "GET /datasets/{dataset}/download": "user-dataset",
    "GET /api/v1/datasets": "user",
    "GET /api/v1/datasets/{dataset}": "user-dataset",
    "GET /api/v1/datasets/{dataset}/view": "user-dataset",
    "GET /api/v1/datasets/{dataset}/download": "user-dataset",
    "POST /api/v1/datasets/{dataset}/request": "user-dataset",
    "GET /dataset-requests": "user",
    "GET /api/v1/dataset-requests": "user",
    "POST /api/v1/dataset-requests/{request_id}/decide": "user-object",
    "GET /admin/datasets": "admin",
    "GET /admin/datasets/{dataset}": "admin",
    "GET /api/v1/admin/datasets": "admin",
    "POST /api/v1/admin/datasets": "admin",
    "GET /api/v1/admin/datasets/{dataset}": "admin",
    "POST /api/v1/admin/datasets/{dataset}/versions": "admin",
    "POST /api/v1/admin/datasets/{dataset}/publish": "admin",
    "POST /api/v1/admin/datasets/{dataset}/unpublish": "admin",
    "POST /api/v1/admin/datasets/{dataset}/grants": "admin",
    "POST /api/v1/admin/dataset-grants/{grant_id}/revoke": "admin",
}
CALLERS = ["anonymous", "login", "user", "other", "auditor", "admin"]
SESSION_ID = "00000000-0000-4000-8000-000000000001"
SAMPLES = {"path": "console.css", "target": "web01", "account": "root", "session_id": SESSION_ID, "name": "alice",
           "action": "unlock", "grant_id": "1", "device_id": "1", "token": "not-a-real-approval-token",
           "dataset": "report", "request_id": "1", "setting": "session.idle_timeout"}


def concrete(path: str) -> str:
    return re.sub(r"{([a-z_]+)(?::[^{}]*(?:{[^{}]*}[^{}]*)*)?}", lambda m: SAMPLES[m.group(1)], path)


def canonical(path: str) -> str:
    return re.sub(r"{([a-z_]+)(?::[^{}]*(?:{[^{}]*}[^{}]*)*)?}", lambda m: "{" + m.group(1) + "}", path)


@pytest.fixture
async def console(database_url, tmp_path):
    from bastion.datadir import init_data_dir
    from bastion.config import load_config

    data = tmp_path / "data"
    await init_data_dir(data, listen="127.0.0.1:0", database_url=database_url)
    services = await Services.open(load_config(data))
    admin = services.admin(actor="test")
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    # port 1: nothing listens there, so a terminal that gets through fails fast at the upstream
    await admin.add_target("web01", "127.0.0.1", 1, host_key)
    await admin.add_target("db01", "127.0.0.1", 1, host_key)
    await admin.add_account("web01", "root", generate=True)
    await admin.add_account("db01", "root", generate=True)
    ids = {}
    for name, roles in (("alice", ["user"]), ("bob", ["user"]), ("audrey", ["auditor"]), ("adam", ["admin"])):
        ids[name] = (await admin.add_user(name, roles=roles, password=f"correct-horse-{name}-battery"))
    await admin.add_grant(user="alice", target="web01", account="root", actions=["shell"])
    await admin.add_grant(user="bob", target="db01", account="root", actions=["shell"])
    # A published dataset only alice holds grants on: downloads, and downloads that need an approval.
    source = tmp_path / "report.csv"
    source.write_text("city,count\nBern,3\n")
    catalog = Catalog.from_services(services, actor="test")
    await catalog.add("report", source)
    await catalog.publish("report")
    await catalog.grant("report", user="alice", mode="download")
    await catalog.grant("report", user="alice", mode="download-with-approval")
    app = create_app(services.config, services)
    client = TestClient(TestServer(app))
    await client.start_server()
    store = app[SESSIONS]
    from sqlalchemy import select

    from bastion.store.models import User

    tokens = {}
    async with services.db() as db:
        users = {u.name: u.id for u in (await db.execute(select(User))).scalars()}
    for caller, user, methods, done in (("login", "alice", ["password"], False),
                                        ("user", "alice", ["password", "totp"], True),
                                        ("other", "bob", ["password", "totp"], True),
                                        ("auditor", "audrey", ["password", "totp"], True),
                                        ("admin", "adam", ["password", "totp"], True)):
        token, session = await store.create(users[user], methods, 2, done, "127.0.0.1")
        tokens[caller] = (token, session.csrf_token)
    yield client, tokens
    await client.close()
    await services.close()


def test_every_route_has_a_rule():
    from bastion.console.app import all_routes
    from bastion.console.render import WEB_DIR

    names = {f"{r.method} {canonical(r.path)}" for r in all_routes(WEB_DIR)}
    assert names - set(EXPECTED) == set(), "routes without an expected rule in this test"
    assert set(EXPECTED) - names == set(), "rules for routes that no longer exist"


def allowed(rule: str, caller: str) -> bool:
    if rule == "user-dataset":
        return caller == "user"  # the only caller holding a grant on the sample dataset
    base = rule.removesuffix("-ws").removesuffix("-object")
    if base == "public":
        return True
    if base == "login":
        return caller != "anonymous"
    if base == "user":
        return caller in ("user", "other", "auditor", "admin")
    return caller == base


@pytest.mark.parametrize("caller", CALLERS)
async def test_matrix(console, caller):
    client, tokens = console
    app_routes = client.server.app[ROUTE_KEY]
    failures = []
    # logout ends the caller's session, so it goes last
    for (method, path), route in sorted(app_routes.items(), key=lambda item: (item[0][1] == "/api/v1/logout", item[0])):
        rule = EXPECTED[f"{method} {canonical(path)}"]
        headers = {"Origin": f"https://{client.server.host}:{client.server.port}"}
        cookies = {}
        if caller != "anonymous":
            token, csrf = tokens[caller]
            cookies[COOKIE] = token
            headers["X-CSRF-Token"] = csrf
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies(cookies)
        if route.websocket and allowed(rule, caller):
            first = await _first_message(client, concrete(path), headers)
            # The socket opens for the role; the object decides: alice may open web01, bob may not.
            granted = "terminal" not in path or caller == "user"
            if granted == ("no such target or access denied" in first or "not live" in first and "terminal" in path):
                failures.append((method, path, first))
            continue
        if route.websocket:
            headers.update({"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        if method == "GET":
            response = await client.get(concrete(path), headers=headers, allow_redirects=False)
        else:
            response = await client.post(concrete(path), json={}, headers=headers, allow_redirects=False)
        status = response.status
        await response.release()
        if allowed(rule, caller):
            ok = status not in (401, 404) or _handler_404(path, status)
            if route.websocket:
                ok = status == 101
        elif caller == "anonymous" or (caller == "login" and rule != "login"):
            ok = status in ((303,) if not (path.startswith("/api/") or route.websocket) else (401,))
        else:
            ok = status == 404
        if not ok:
            failures.append((method, path, status))
    assert failures == []


async def _first_message(client, path: str, headers: dict) -> str:
    ws = await client.ws_connect(path, headers=headers)
    try:
        await ws.send_str('{"type": "resize", "cols": 80, "rows": 24}')
        message = await ws.receive(timeout=20)
        return message.data if isinstance(message.data, str) else repr(message.data)
    finally:
        await ws.close()


def _handler_404(path: str, status: int) -> bool:
    # Objects that do not exist in the fixture answer 404 from the handler itself.
    return status == 404 and any(f"{{{name}" in path for name in ("session_id", "device_id", "grant_id", "token", "request_id"))
