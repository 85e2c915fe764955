"""A user's own pages: my targets, my security keys and devices."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from bastion.auth.webauthn import WebAuthnError, decode_credential, encode_credential
from bastion.audit.events import AdminChange
from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.console.views.login import _body
from bastion.store.models import Credential

TARGETS_SCHEMA = {"type": "array", "items": {"type": "object", "properties": {
    "target": {"type": "string"}, "account": {"type": "string"}, "actions": {"type": "array"}}}}


async def _my_targets(request: web.Request) -> list[dict[str, Any]]:
    services = request.app[render.SERVICES]
    who = caller(request)
    identity = who.identity() if who.session else None
    if identity is None:
        from bastion.auth.identity import Identity

        identity = Identity(who.user.id, who.user.name, who.user.roles, who.user.groups, 0, (), who.source_addr)
    items = await services.policy.granted_targets(identity, services.clock.now())
    return [{"target": i.target, "account": i.account, "actions": sorted(i.actions)} for i in items]


async def home(request: web.Request) -> web.Response:
    approvals = await request.app[render.SERVICES].approvals.pending_for(caller(request).user.id)
    return render.page(request, "home.html", targets=await _my_targets(request), approvals=approvals)


async def me(request: web.Request) -> web.Response:
    who = caller(request)
    return web.json_response({"user": who.user.name, "roles": list(who.user.roles), "level": who.level,
                              "methods": list(who.session.methods) if who.session else [],
                              "device_id": who.session.device_id if who.session else None})


async def my_targets(request: web.Request) -> web.Response:
    return web.json_response(await _my_targets(request))


async def _keys(request: web.Request) -> list[Credential]:
    services = request.app[render.SERVICES]
    async with services.db() as db:
        return list((await db.execute(select(Credential).where(
            Credential.user_id == caller(request).user.id,
            Credential.kind.in_(["webauthn", "sk_key", "ssh_key", "totp"])).order_by(Credential.id))).scalars())


async def security_page(request: web.Request) -> web.Response:
    services = request.app[render.SERVICES]
    devices = await services.admin().list_devices(caller(request).user.name)
    return render.page(request, "security.html", credentials=await _keys(request), devices=devices)


async def register_begin(request: web.Request) -> web.Response:
    who = caller(request)
    existing = [decode_credential(c.public) for c in await _keys(request) if c.kind == "webauthn"]
    options, state = request.app[render.WEBAUTHN].register_begin(who.user.id, who.user.name, existing)
    await request.app[render.SESSIONS].set_challenge(who.session, {"kind": "register", **state})
    return web.json_response(options)


async def register_complete(request: web.Request) -> web.Response:
    body = await _body(request)
    who = caller(request)
    state = who.session.challenge or {}
    await request.app[render.SESSIONS].set_challenge(who.session, None)
    if state.get("kind") != "register":
        return web.json_response({"error": "no registration is pending"}, status=409)
    label = body.get("label") if isinstance(body.get("label"), str) else "security key"
    try:
        data, credential_id, counter = request.app[render.WEBAUTHN].register_complete(state, body.get("credential"))
    except WebAuthnError as exc:
        return web.json_response({"error": exc.safe_message}, status=400)
    services = request.app[render.SERVICES]
    async with services.db() as db, db.begin():
        db.add(Credential(user_id=who.user.id, kind="webauthn", public=encode_credential(data),
                          fingerprint=credential_id, label=label[:64], counter=counter,
                          created_at=services.clock.now()))
    await services.audit.emit(AdminChange(actor=who.user.name, source=who.source_addr, target=who.user.name,
                                          action="user.webauthn.register", object=who.user.name,
                                          after={"credential_id": credential_id, "label": label[:64]}))
    return web.json_response({"registered": credential_id})


ROUTES = [
    Route("GET", "/", home, Access.AUTHENTICATED, "My targets"),
    Route("GET", "/me/security", security_page, Access.AUTHENTICATED, "My security keys and devices"),
    Route("GET", "/api/v1/me", me, Access.AUTHENTICATED, "Who am I", scope="me",
          response={"type": "object", "properties": {"user": {"type": "string"}, "level": {"type": "integer"}}}),
    Route("GET", "/api/v1/me/targets", my_targets, Access.AUTHENTICATED, "Targets granted to me", scope="me",
          response=TARGETS_SCHEMA),
    Route("POST", "/api/v1/me/webauthn/register/begin", register_begin, Access.AUTHENTICATED,
          "Start registering a security key", body={"type": "object", "additionalProperties": False}),
    Route("POST", "/api/v1/me/webauthn/register/complete", register_complete, Access.AUTHENTICATED,
          "Finish registering a security key",
          body={"type": "object", "required": ["credential"], "additionalProperties": False,
                "properties": {"credential": {"type": "object"}, "label": {"type": "string", "maxLength": 64}}}),
]
