"""Global policy pages and API: the settings in force, changed at runtime (audited before/after) or reset."""

from __future__ import annotations

from aiohttp import web

from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.console.views.login import _body
from bastion.errors import ConfigError, Conflict, NotFound

# Raising one of these above the level of the admin's own session would let the admin lock everyone,
# themselves included, out of the console: such a change needs a session at that level first.
CONSOLE_LEVELS = ("console.login_level", "console.admin_level")
VALUE = {"oneOf": [{"type": "string", "maxLength": 64}, {"type": "number"}, {"type": "boolean"}]}


def _policy(request: web.Request):
    return request.app[render.SERVICES].global_policy


async def show(request: web.Request) -> web.Response:
    return web.json_response([value.as_dict() for value in _policy(request).values()])


def _lockout_risk(request: web.Request, name: str, value: object) -> str:
    """Why this change would lock the admin making it out ("" when it would not)."""
    who = caller(request)
    if name in CONSOLE_LEVELS and isinstance(value, int) and value > who.level:
        return f"your session is at level {who.level}: step up to level {value} before demanding it"
    if name == "auth.device_policy" and value == "required" and (who.session is None or who.session.device_id is None):
        return "your session is not from a bound device: sign in from one before requiring devices"
    return ""


async def change(request: web.Request) -> web.Response:
    body = await _body(request)
    if set(body) != {"value"} or isinstance(body["value"], (dict, list)) or body["value"] is None:
        raise web.HTTPBadRequest(text="the body must be {\"value\": ...}")
    policy, who = _policy(request), caller(request)
    name = request.match_info["setting"]
    try:
        parsed = policy.parse(name, body["value"])
    except NotFound as exc:
        return web.json_response({"error": exc.safe_message}, status=404)
    except ConfigError as exc:
        return web.json_response({"error": exc.safe_message}, status=400)
    risk = _lockout_risk(request, name, parsed)
    if risk:
        return web.json_response({"error": risk}, status=409)
    result = await policy.set(name, body["value"], who.user.name, who.source_addr)
    return web.json_response(result.as_dict())


async def reset(request: web.Request) -> web.Response:
    policy, who = _policy(request), caller(request)
    name = request.match_info["setting"]
    try:
        current = policy.get(name)
    except NotFound as exc:
        return web.json_response({"error": exc.safe_message}, status=404)
    risk = _lockout_risk(request, name, current.file_value)
    if risk:
        return web.json_response({"error": risk}, status=409)
    try:
        result = await policy.reset(name, who.user.name, who.source_addr)
    except Conflict as exc:
        return web.json_response({"error": exc.safe_message}, status=409)
    return web.json_response(result.as_dict())


SETTING = "{setting:[a-z_]{1,16}\\.[a-z_]{1,32}}"
ROUTES = [
    Route("GET", "/api/v1/admin/policy", show, Access.ADMIN,
          "The global policy: each setting's value in force, where it comes from and the bastion.toml value",
          scope="admin:read", response={"type": "array"}),
    # Changes need a console session (no API-token scope): they can weaken every other control.
    Route("POST", f"/api/v1/admin/policy/{SETTING}", change, Access.ADMIN,
          "Change a global policy setting now (audited with before and after; wins over bastion.toml until reset)",
          body={"type": "object", "required": ["value"], "additionalProperties": False,
                "properties": {"value": VALUE}}),
    Route("POST", f"/api/v1/admin/policy/{SETTING}/reset", reset, Access.ADMIN,
          "Drop a runtime change: the bastion.toml / BASTION_* value (or the default) applies again",
          body={"type": "object", "additionalProperties": False}),
]
