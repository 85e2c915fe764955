"""Console login and step-up: password, then TOTP or WebAuthn until the demanded level; logout."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from fido2.webauthn import AttestedCredentialData
from sqlalchemy import select

from bastion.audit.events import StepUp
from bastion.auth import levels
from bastion.auth.devices import PROOF_CERT, DeviceMatch, strongest
from bastion.auth.flow import AuthFlow, Verdict
from bastion.auth.neighbours import peer_mac
from bastion.auth.webauthn import WebAuthnError, decode_credential
from bastion.console import render
from bastion.console.context import caller
from bastion.console.middleware import safe_next
from bastion.console.routes import Access, Route
from bastion.console.websession import COOKIE, ConsoleSession
from bastion.store.models import Credential, GroupPolicy, User

MAX_FIELD = 1024
LEVEL_PARAM = {"type": "integer", "minimum": 1, "maximum": 3}
DEVICE_REQUIRED = ("this account requires a bound device: use an approved device (its client certificate or "
                   "its MAC on the bastion's network)")


def _set_cookie(response: web.StreamResponse, token: str) -> None:
    response.set_cookie(COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict")


def _services(request: web.Request) -> Any:
    return request.app[render.SERVICES]


def _string(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > MAX_FIELD:
        raise web.HTTPBadRequest(text=f"{key} must be a string")
    return value


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def _wanted_level(value: Any, floor: int) -> int:
    try:
        level = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        level = 1
    return max(floor, min(3, max(1, level)))


async def _flow_for(request: web.Request, session: ConsoleSession) -> AuthFlow:
    """Rebuild the login flow of a console session from what its row remembers."""
    services = _services(request)
    who = caller(request)
    flow = AuthFlow(services.authenticator, who.source_addr, 0, who.peer_mac)
    await flow.start(who.user.name)
    flow.factors = list(session.methods)
    flow.demand(session.required_level)
    return flow


def _next_step(flow: AuthFlow) -> dict[str, Any]:
    if flow.complete:
        return {"next": "done"}
    offers = flow.can_offer()
    choices = []
    if levels.TOTP in offers:
        choices.append("totp")
    if offers & {levels.WEBAUTHN, levels.WEBAUTHN_VERIFIED}:
        choices.append("webauthn")
    return {"next": "choose" if choices else "impossible", "choices": choices, "level": flow.required_level,
            "needed": levels.NEEDS.get(flow.required_level, "")}


async def _device(request: web.Request, flow: AuthFlow) -> DeviceMatch | None:
    """The device this browser proves: its client certificate, or its MAC on our segment."""
    who = caller(request)
    if who.cert_fingerprint and flow.user is not None:
        for device in flow.user.devices:
            if device.approved and device.cert_fingerprint and device.cert_fingerprint == who.cert_fingerprint:
                return DeviceMatch(device.id, device.name, PROOF_CERT)
    return flow.device


async def _device_policy(request: web.Request, user_id: int) -> str:
    services = _services(request)
    async with services.db() as db:
        user = await db.get(User, user_id)
        groups = list(user.groups or [])
        rows = (await db.execute(select(GroupPolicy).where(GroupPolicy.name.in_(groups)))).scalars().all() \
            if groups else []
    return strongest(services.config["auth.device_policy"], user.device_policy, *[g.device_policy for g in rows])


async def _finish_or_continue(request: web.Request, session: ConsoleSession, flow: AuthFlow,
                              next_path: str = "/") -> web.Response:
    step = _next_step(flow)
    if step["next"] != "done":
        sessions = request.app[render.SESSIONS]
        token, fresh = await sessions.rotate(session, methods=list(flow.factors), authenticated=session.authenticated,
                                             required_level=flow.required_level)
        response = web.json_response({**step, "csrf": fresh.csrf_token})
        _set_cookie(response, token)
        return response
    device = await _device(request, flow)
    policy = await _device_policy(request, flow.user.id)
    if policy == "required" and device is None:
        await flow.refused_after_credentials(flow.factors[-1], "no approved device")
        await request.app[render.SESSIONS].end(session)
        return web.json_response({"error": DEVICE_REQUIRED}, status=403)
    flow.device = device
    await flow.succeeded()
    if session.authenticated:
        identity = flow.identity
        await _services(request).audit.emit(StepUp(actor=identity.name, source=identity.source_addr, target="console",
                                                   method=flow.factors[-1], level=identity.level))
    # A new session id at login and at every step-up.
    token, fresh = await request.app[render.SESSIONS].rotate(
        session, methods=list(flow.factors), authenticated=True, required_level=flow.required_level,
        device_id=device.device_id if device else None, device_proof=device.proof if device else "")
    response = web.json_response({"next": "done", "redirect": safe_next(next_path), "csrf": fresh.csrf_token,
                                  "level": flow.level})
    _set_cookie(response, token)
    return response


# --- handlers -------------------------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    who = caller(request)
    level = _wanted_level(request.query.get("level"), 1)
    return render.page(request, "login.html", next=safe_next(request.query.get("next")), wanted=level,
                       stepping_up=who.kind == "session")


async def password(request: web.Request) -> web.Response:
    body = await _body(request)
    username, secret = _string(body, "username"), _string(body, "password")
    services = _services(request)
    who = caller(request)
    if who.peer is not None and not who.peer.via_proxy:
        who.peer_mac = await peer_mac(who.source_addr)
    flow = AuthFlow(services.authenticator, who.source_addr, 0, who.peer_mac)
    await flow.start(username)
    flow.demand(_wanted_level(body.get("level"), services.config["console.login_level"]))
    verdict = await flow.password(secret)
    if verdict is not Verdict.ACCEPTED:
        return web.json_response({"error": "wrong user name or password"}, status=401)
    if who.session is not None:
        await request.app[render.SESSIONS].end(who.session)
    _, session = await request.app[render.SESSIONS].create(
        flow.user.id, list(flow.factors), flow.required_level, False, who.source_addr)
    # _finish_or_continue rotates to the session the browser keeps (so the first token is never sent)
    return await _finish_or_continue(request, session, flow,
                                     body["next"] if isinstance(body.get("next"), str) else "/")


async def step_up(request: web.Request) -> web.Response:
    """An authenticated session asks to raise its level (the page then offers TOTP or WebAuthn)."""
    body = await _body(request)
    who = caller(request)
    level = _wanted_level(body.get("level"), 1)
    flow = await _flow_for(request, who.session)
    flow.demand(level)
    await request.app[render.SESSIONS].set_required_level(who.session, flow.required_level)
    who.session.required_level = flow.required_level
    return web.json_response({**_next_step(flow), "csrf": who.session.csrf_token})


async def totp_code(request: web.Request) -> web.Response:
    body = await _body(request)
    who = caller(request)
    flow = await _flow_for(request, who.session)
    if await flow.totp(_string(body, "code")) is not Verdict.ACCEPTED:
        return web.json_response({"error": "that code was not accepted"}, status=401)
    return await _finish_or_continue(request, who.session, flow, body.get("next") if isinstance(body.get("next"), str)
                                     else "/")


async def _webauthn_credentials(request: web.Request, user_id: int) -> list[tuple[int, bytes]]:
    async with _services(request).db() as db:
        rows = (await db.execute(select(Credential).where(Credential.user_id == user_id,
                                                          Credential.kind == "webauthn"))).scalars().all()
    return [(row.id, decode_credential(row.public)) for row in rows]


async def webauthn_begin(request: web.Request) -> web.Response:
    who = caller(request)
    flow = await _flow_for(request, who.session)
    credentials = await _webauthn_credentials(request, who.user.id)
    if not credentials or flow.complete:
        return web.json_response({"error": "no security key can be used now"}, status=409)
    options, state = request.app[render.WEBAUTHN].authenticate_begin([c for _, c in credentials],
                                                                      user_verification=flow.required_level >= 3)
    await request.app[render.SESSIONS].set_challenge(who.session, {"kind": "authenticate", **state})
    return web.json_response(options)


async def webauthn_complete(request: web.Request) -> web.Response:
    body = await _body(request)
    who = caller(request)
    state = who.session.challenge or {}
    await request.app[render.SESSIONS].set_challenge(who.session, None)  # a challenge answers once
    if state.get("kind") != "authenticate":
        return web.json_response({"error": "no security key challenge is pending"}, status=409)
    credentials = await _webauthn_credentials(request, who.user.id)
    flow = await _flow_for(request, who.session)
    try:
        assertion = request.app[render.WEBAUTHN].authenticate_complete(state, [c for _, c in credentials],
                                                                       body.get("credential"))
    except WebAuthnError as exc:
        await flow.wrong_answer(levels.WEBAUTHN, exc.safe_message)
        return web.json_response({"error": exc.safe_message}, status=401)
    credential_id = next(cid for cid, data in credentials
                         if AttestedCredentialData(data).credential_id.hex() == assertion.credential_id)
    if await flow.webauthn(credential_id, assertion.user_present, assertion.user_verified,
                           assertion.counter) is not Verdict.ACCEPTED:
        return web.json_response({"error": "the security key answer was not accepted"}, status=401)
    return await _finish_or_continue(request, who.session, flow,
                                     body.get("next") if isinstance(body.get("next"), str) else "/")


async def logout(request: web.Request) -> web.Response:
    who = caller(request)
    await request.app[render.SESSIONS].end(who.session)
    response = web.json_response({"next": "/login"})
    response.del_cookie(COOKIE, path="/")
    return response


ROUTES = [
    Route("GET", "/login", login_page, Access.PUBLIC, "Login and step-up page"),
    Route("POST", "/api/v1/login/password", password, Access.PUBLIC, "First factor: user name and password",
          body={"type": "object", "required": ["username", "password"], "additionalProperties": False,
                "properties": {"username": {"type": "string", "maxLength": 64},
                               "password": {"type": "string", "maxLength": 1024},
                               "level": LEVEL_PARAM, "next": {"type": "string", "maxLength": 1024}}}),
    Route("POST", "/api/v1/login/stepup", step_up, Access.AUTHENTICATED, "Ask to raise this session's level",
          body={"type": "object", "required": ["level"], "additionalProperties": False,
                "properties": {"level": LEVEL_PARAM}}),
    Route("POST", "/api/v1/login/totp", totp_code, Access.LOGIN, "Second factor: a TOTP code",
          body={"type": "object", "required": ["code"], "additionalProperties": False,
                "properties": {"code": {"type": "string", "maxLength": 16},
                               "next": {"type": "string", "maxLength": 1024}}}),
    Route("POST", "/api/v1/login/webauthn/begin", webauthn_begin, Access.LOGIN,
          "Second factor: WebAuthn assertion options", body={"type": "object", "additionalProperties": False}),
    Route("POST", "/api/v1/login/webauthn/complete", webauthn_complete, Access.LOGIN,
          "Second factor: the WebAuthn assertion",
          body={"type": "object", "required": ["credential"], "additionalProperties": False,
                "properties": {"credential": {"type": "object"}, "next": {"type": "string", "maxLength": 1024}}}),
    Route("POST", "/api/v1/logout", logout, Access.LOGIN, "End this console session",
          body={"type": "object", "additionalProperties": False}),
]
