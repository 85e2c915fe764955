"""Browser approval of an SSH step-up: the user confirms the SSH login with a security key here."""

from __future__ import annotations

from aiohttp import web

from bastion.audit.events import StepUp
from bastion.auth import levels
from bastion.auth.webauthn import WebAuthnError
from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.console.views.login import _body, _webauthn_credentials

TOKEN = "{token:[A-Za-z0-9_-]{16,64}}"
EMPTY = {"type": "object", "additionalProperties": False}


async def _pending(request: web.Request):
    who = caller(request)
    approval = await request.app[render.SERVICES].approvals.pending(request.match_info["token"], who.user.id)
    if approval is None:
        # expired, used, someone else's, or never existed: all look the same
        raise web.HTTPNotFound()
    return approval


async def page(request: web.Request) -> web.Response:
    approval = await _pending(request)
    return render.page(request, "approve.html", approval=approval, token=request.match_info["token"])


async def begin(request: web.Request) -> web.Response:
    approval = await _pending(request)
    who = caller(request)
    credentials = await _webauthn_credentials(request, who.user.id)
    if not credentials:
        return web.json_response({"error": "register a security key first"}, status=409)
    options, state = request.app[render.WEBAUTHN].authenticate_begin([c for _, c in credentials],
                                                                      user_verification=approval.level >= 3)
    await request.app[render.SESSIONS].set_challenge(who.session, {"kind": f"approve:{approval.id}", **state})
    return web.json_response(options)


async def complete(request: web.Request) -> web.Response:
    approval = await _pending(request)
    body = await _body(request)
    who = caller(request)
    state = who.session.challenge or {}
    await request.app[render.SESSIONS].set_challenge(who.session, None)
    if state.get("kind") != f"approve:{approval.id}":
        return web.json_response({"error": "no approval is pending in this browser"}, status=409)
    credentials = await _webauthn_credentials(request, who.user.id)
    services = request.app[render.SERVICES]
    try:
        assertion = request.app[render.WEBAUTHN].authenticate_complete(state, [c for _, c in credentials],
                                                                       body.get("credential"))
    except WebAuthnError as exc:
        return web.json_response({"error": exc.safe_message}, status=401)
    if approval.level >= 3 and not assertion.user_verified:
        return web.json_response({"error": "this approval needs user verification (fingerprint or PIN)"}, status=401)
    from fido2.webauthn import AttestedCredentialData

    credential_id = next(cid for cid, data in credentials
                         if AttestedCredentialData(data).credential_id.hex() == assertion.credential_id)
    if assertion.counter != 0 and not await services.authenticator.claim_counter(credential_id, assertion.counter):
        return web.json_response({"error": "security key counter did not increase"}, status=401)
    factor = levels.WEBAUTHN_VERIFIED if assertion.user_verified else levels.WEBAUTHN
    if not await services.approvals.approve(approval.id, who.user.id, factor):
        return web.json_response({"error": "the approval expired"}, status=410)
    await services.audit.emit(StepUp(actor=who.user.name, source=who.source_addr, target=approval.target or "ssh",
                                     method=f"browser-approval/{factor}", level=approval.level))
    return web.json_response({"approved": True})


ROUTES = [
    Route("GET", f"/approve/{TOKEN}", page, Access.AUTHENTICATED, "Approve an SSH login"),
    Route("POST", f"/api/v1/approvals/{TOKEN}/begin", begin, Access.AUTHENTICATED,
          "Start approving an SSH login with a security key", body=EMPTY),
    Route("POST", f"/api/v1/approvals/{TOKEN}/complete", complete, Access.AUTHENTICATED,
          "Finish approving an SSH login", body={"type": "object", "required": ["credential"],
                                                 "additionalProperties": False,
                                                 "properties": {"credential": {"type": "object"}}}),
]
