"""Admin pages and API: users, devices, targets and accounts, grants; every change is audited."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.console.views.login import _body
from bastion.errors import BastionError, Conflict, NotFound

NAME = {"type": "string", "minLength": 1, "maxLength": 64}
LEVEL = {"type": "integer", "minimum": 1, "maximum": 3}
POLICY = {"enum": ["off", "advisory", "required"]}
EMPTY = {"type": "object", "additionalProperties": False}


def _admin(request: web.Request) -> Any:
    who = caller(request)
    return request.app[render.SERVICES].admin(actor=who.user.name, source=who.source_addr)


async def _run(coro) -> web.Response:
    """Run an admin operation; its safe errors become 400/404/409 answers."""
    try:
        result = await coro
    except NotFound as exc:
        return web.json_response({"error": exc.safe_message}, status=404)
    except Conflict as exc:
        return web.json_response({"error": exc.safe_message}, status=409)
    except BastionError as exc:
        return web.json_response({"error": exc.safe_message}, status=400)
    return web.json_response(result if result is not None else {"ok": True})


def _opt(body: dict, key: str, kind: type, default: Any = None) -> Any:
    """A field of the expected type; absent or null gives the default."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise web.HTTPBadRequest(text=f"{key} has the wrong type")
    return value


async def page(request: web.Request) -> web.Response:
    admin = _admin(request)
    policy = request.app[render.SERVICES].global_policy.values()
    return render.page(request, "admin.html", users=await admin.list_users(), targets=await admin.list_targets(),
                       grants=await admin.list_grants(), devices=await admin.list_devices(), policy=policy)


async def users(request: web.Request) -> web.Response:
    return await _run(_admin(request).list_users())


async def user_add(request: web.Request) -> web.Response:
    body = await _body(request)
    roles = _opt(body, "roles", list, ["user"])
    groups = _opt(body, "groups", list, [])
    if not all(isinstance(r, str) for r in roles + groups):
        raise web.HTTPBadRequest(text="roles and groups must be strings")
    return await _run(_admin(request).add_user(_opt(body, "name", str, ""), roles=roles,
                                               password=_opt(body, "password", str), groups=groups))


async def user_action(request: web.Request) -> web.Response:
    name, action = request.match_info["name"], request.match_info["action"]
    admin = _admin(request)
    operations = {"disable": lambda: admin.set_user_status(name, "disabled"),
                  "enable": lambda: admin.set_user_status(name, "active"),
                  "unlock": lambda: admin.unlock_user(name),
                  "reset-totp": lambda: admin.reset_totp(name)}
    if action not in operations:
        raise web.HTTPNotFound()
    response = await _run(operations[action]())
    if action == "disable" and response.status == 200:
        # a disabled user's console sessions end too (SSH sessions end at the next re-check)
        await _end_console_sessions(request, name)
    return response


async def _end_console_sessions(request: web.Request, name: str) -> None:
    from sqlalchemy import select

    from bastion.store.models import User

    async with request.app[render.SERVICES].db() as db:
        user = (await db.execute(select(User).where(User.name == name))).scalar_one_or_none()
    if user is not None:
        await request.app[render.SESSIONS].end_all_for(user.id)


async def targets(request: web.Request) -> web.Response:
    return await _run(_admin(request).list_targets())


async def target_add(request: web.Request) -> web.Response:
    body = await _body(request)
    port = _opt(body, "port", int, 0)
    return await _run(_admin(request).add_target(
        _opt(body, "name", str, ""), _opt(body, "host", str, ""), port, _opt(body, "host_key", str, ""),
        min_level=_opt(body, "min_level", int), device_policy=_opt(body, "device_policy", str)))


async def account_add(request: web.Request) -> web.Response:
    body = await _body(request)
    password = _opt(body, "password", str)
    return await _run(_admin(request).add_account(request.match_info["name"], _opt(body, "login", str, ""),
                                                  generate=password is None, password=password,
                                                  min_level=_opt(body, "min_level", int)))


async def grants(request: web.Request) -> web.Response:
    return await _run(_admin(request).list_grants())


async def grant_add(request: web.Request) -> web.Response:
    body = await _body(request)
    actions = _opt(body, "actions", list, ["shell", "exec"])
    if not all(isinstance(a, str) for a in actions):
        raise web.HTTPBadRequest(text="actions must be strings")
    return await _run(_admin(request).add_grant(
        user=_opt(body, "user", str), group=_opt(body, "group", str), target=_opt(body, "target", str, ""),
        account=_opt(body, "account", str, ""), actions=actions, until=_opt(body, "until", str),
        valid_from=_opt(body, "from", str), min_level=_opt(body, "min_level", int)))


async def grant_revoke(request: web.Request) -> web.Response:
    return await _run(_admin(request).revoke_grant(int(request.match_info["grant_id"])))


async def devices(request: web.Request) -> web.Response:
    return await _run(_admin(request).list_devices())


async def device_add(request: web.Request) -> web.Response:
    body = await _body(request)
    macs = _opt(body, "macs", list, [])
    if not all(isinstance(m, str) for m in macs):
        raise web.HTTPBadRequest(text="macs must be strings")
    config = request.app[render.SERVICES].config

    async def enrol() -> dict[str, Any]:
        result = await _admin(request).add_device(
            _opt(body, "user", str, ""), _opt(body, "name", str, ""), macs, ssh_key=_opt(body, "ssh_key", str),
            keys_dir=config.keys_dir, issue_cert=bool(_opt(body, "issue_cert", bool, False)))
        result.pop("p12", None)  # the base64 copy travels in JSON, shown once
        return result

    return await _run(enrol())


async def device_action(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ("approve", "revoke"):
        raise web.HTTPNotFound()
    status = "approved" if action == "approve" else "revoked"
    return await _run(_admin(request).set_device_status(int(request.match_info["device_id"]), status))


USER_NAME = "{name:[a-z_][a-z0-9_.-]{0,31}}"
ROUTES = [
    Route("GET", "/admin", page, Access.ADMIN, "Administration"),
    Route("GET", "/api/v1/admin/users", users, Access.ADMIN, "List users", scope="admin:read",
          response={"type": "array"}),
    Route("POST", "/api/v1/admin/users", user_add, Access.ADMIN, "Create a user", scope="admin:write",
          body={"type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"name": NAME, "password": {"type": "string", "maxLength": 1024},
                               "roles": {"type": "array", "items": {"enum": ["admin", "auditor", "user"]}},
                               "groups": {"type": "array", "items": NAME}}}),
    Route("POST", f"/api/v1/admin/users/{USER_NAME}/{{action:[a-z-]{{1,16}}}}", user_action, Access.ADMIN,
          "Disable, enable, unlock a user or reset their TOTP (action: disable|enable|unlock|reset-totp)",
          scope="admin:write", body=EMPTY),
    Route("GET", "/api/v1/admin/targets", targets, Access.ADMIN, "List targets", scope="admin:read",
          response={"type": "array"}),
    Route("POST", "/api/v1/admin/targets", target_add, Access.ADMIN, "Add a target with a pinned host key",
          scope="admin:write",
          body={"type": "object", "required": ["name", "host", "port", "host_key"], "additionalProperties": False,
                "properties": {"name": NAME, "host": {"type": "string", "maxLength": 253},
                               "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                               "host_key": {"type": "string", "maxLength": 16384}, "min_level": LEVEL,
                               "device_policy": POLICY}}),
    Route("POST", "/api/v1/admin/targets/{name:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}}/accounts", account_add,
          Access.ADMIN, "Add an account (generated key unless a password is given)", scope="admin:write",
          body={"type": "object", "required": ["login"], "additionalProperties": False,
                "properties": {"login": NAME, "password": {"type": "string", "maxLength": 1024},
                               "min_level": LEVEL}}),
    Route("GET", "/api/v1/admin/grants", grants, Access.ADMIN, "List grants", scope="admin:read",
          response={"type": "array"}),
    Route("POST", "/api/v1/admin/grants", grant_add, Access.ADMIN, "Create a grant", scope="admin:write",
          body={"type": "object", "required": ["target", "account"], "additionalProperties": False,
                "properties": {"user": NAME, "group": NAME, "target": NAME, "account": NAME,
                               "actions": {"type": "array", "items": {
                                   "enum": ["shell", "exec", "sftp-read", "sftp-write", "forward"]}},
                               "until": {"type": "string", "format": "date-time"},
                               "from": {"type": "string", "format": "date-time"}, "min_level": LEVEL}}),
    Route("POST", "/api/v1/admin/grants/{grant_id:[0-9]{1,9}}/revoke", grant_revoke, Access.ADMIN,
          "Revoke a grant", scope="admin:write", body=EMPTY),
    Route("GET", "/api/v1/admin/devices", devices, Access.ADMIN, "List devices", scope="admin:read",
          response={"type": "array"}),
    Route("POST", "/api/v1/admin/devices", device_add, Access.ADMIN,
          "Enrol a device (pending); with issue_cert the answer holds a PKCS#12 client certificate, once",
          scope="admin:write",
          body={"type": "object", "required": ["user", "name"], "additionalProperties": False,
                "properties": {"user": NAME, "name": NAME, "macs": {"type": "array", "items": {"type": "string"}},
                               "ssh_key": {"type": "string", "maxLength": 16384}, "issue_cert": {"type": "boolean"}}}),
    Route("POST", "/api/v1/admin/devices/{device_id:[0-9]{1,9}}/{action:[a-z]{1,16}}", device_action, Access.ADMIN,
          "Approve or revoke a device (action: approve|revoke)", scope="admin:write", body=EMPTY),
]
