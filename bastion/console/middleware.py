"""Request gatekeeping: identify the caller, apply the route's rule, CSRF, step-up; deny by default."""

from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit

from aiohttp import web

from bastion.console import render
from bastion.console.context import CALLER_KEY, Caller, User
from bastion.console.routes import Access, Handler, Route, route_of
from bastion.console.websession import COOKIE, same
from bastion.store.models import User as UserRow

log = logging.getLogger("bastion.console")

CSP = render.BASE_CSP
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "X-Frame-Options": "DENY",
    "Server": "bastion",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # A page may have set its own CSP (see render.EXTRA_CSP); everything else is forced.
    for name, value in SECURITY_HEADERS.items():
        if name == "Content-Security-Policy":
            response.headers.setdefault(name, value)
        else:
            response.headers[name] = value


def safe_next(target: str | None) -> str:
    """Only a local path may be a redirect target (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(c) < 32 for c in target):
        return "/"
    return target


def _deny(request: web.Request, status: int, message: str, **extra) -> web.StreamResponse:
    if request.path.startswith("/api/") or render.JINJA not in request.app:
        return web.json_response({"error": message, **extra}, status=status)
    return render.page(request, "error.html", status=status, message=message)


async def _identify(request: web.Request) -> Caller:
    services = request.app.get(render.SERVICES)
    peer = request.app[render.PEERS].get(request.transport) if request.transport else None
    source = peer.addr if peer is not None else (request.remote or "")
    caller = Caller("anonymous", source)
    caller.peer = peer
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is not None:
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            import hashlib

            caller.cert_fingerprint = hashlib.sha256(der).hexdigest()
    if services is None:  # the bare app of listener tests: public routes only
        return caller
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer ") and request.path.startswith("/api/"):
        holder = await request.app[render.TOKENS].holder(authorization[7:].strip())
        if holder is None:
            raise web.HTTPUnauthorized()
        caller.kind = "token"
        caller.user = User(holder.user_id, holder.user_name, holder.roles, holder.groups)
        caller.scopes = holder.scopes
        return caller
    session = await request.app[render.SESSIONS].find(request.cookies.get(COOKIE))
    if session is None:
        return caller
    async with services.db() as db:
        row = await db.get(UserRow, session.user_id)
    if row is None or row.status != "active":
        await request.app[render.SESSIONS].end(session)
        return caller
    caller.kind = "session" if session.authenticated else "login"
    caller.user = User(row.id, row.name, tuple(row.roles or ()), tuple(row.groups or ()))
    caller.session = session
    return caller


def _allowed(route: Route, caller: Caller) -> bool:
    if route.access is Access.PUBLIC:
        return True
    if caller.kind == "token":
        return bool(route.scope) and route.scope in caller.scopes and _role_ok(route, caller)
    if route.access is Access.LOGIN:
        return caller.kind in ("login", "session")
    return caller.kind == "session" and _role_ok(route, caller)


def _role_ok(route: Route, caller: Caller) -> bool:
    if route.access is Access.ADMIN:
        return caller.has_role("admin")
    if route.access is Access.AUDITOR:
        return caller.has_role("auditor")
    return True


def _needed_level(request: web.Request, route: Route) -> int:
    services = request.app.get(render.SERVICES)
    if services is None:
        return route.min_level
    config = services.config
    if route.access is Access.ADMIN:
        return max(route.min_level, config["console.admin_level"])
    if route.access is Access.AUDITOR:
        return max(route.min_level, config["console.auditor_level"])
    return route.min_level


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # non-browser clients; cookies plus the CSRF token still protect sessions
    parts = urlsplit(origin)
    return parts.scheme == "https" and parts.netloc == request.host


@web.middleware
async def gatekeeper(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request passes here: no route rule means 404, whatever the handler would do."""
    route = route_of(request)
    if route is None:
        return _deny(request, 404, "not found")
    try:
        caller = await _identify(request)
    except web.HTTPUnauthorized:
        return _deny(request, 401, "authentication required")
    request[CALLER_KEY] = caller
    if not _allowed(route, caller):
        if caller.kind in ("anonymous", "login") and route.access is not Access.PUBLIC:
            if route.api or route.websocket:
                return _deny(request, 401, "authentication required")
            raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='/')}")
        # Forbidden looks exactly like missing.
        return _deny(request, 404, "not found")
    needed = _needed_level(request, route)
    if caller.kind == "session" and caller.level < needed:
        if route.api or route.websocket:
            return _deny(request, 403, "step-up required", level=needed)
        raise web.HTTPSeeOther(f"/login?level={needed}&next={quote(request.path_qs, safe='/')}")
    if route.changes_state or route.websocket:
        if not _same_origin(request):
            return _deny(request, 403, "cross-origin request refused")
        if caller.session is not None and not route.websocket:
            sent = request.headers.get("X-CSRF-Token", "")
            if not sent or not same(sent, caller.session.csrf_token):
                return _deny(request, 403, "missing or wrong CSRF token")
        if route.body is not None and request.content_type != "application/json":
            return _deny(request, 415, "send application/json")
        if route.form is not None and request.content_type != "multipart/form-data":
            return _deny(request, 415, "send multipart/form-data")
    return await handler(request)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors as JSON (API) or a page; unexpected ones never show their details."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status = 404 if exc.status == 405 else exc.status
        reason = "not found" if status == 404 else (exc.text if exc.content_type == "text/plain" and exc.text
                                                      and len(exc.text) < 200 else exc.reason.lower())
        return _deny(request, status, reason)
    except Exception:
        log.exception("console request failed: %s %s", request.method, request.path)
        return _deny(request, 500, "internal error")
