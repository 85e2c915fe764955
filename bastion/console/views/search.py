"""Auditor search across recorded sessions: by a command typed or by output text, linking into the replay."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.errors import UsageError
from bastion.search import MAX_LIMIT, MAX_SESSIONS_SCANNED
from bastion.search.index import MAX_QUERY_CHARS, SearchOutcome, parse_since, search_sessions

FILTERS = {"user": {"type": "string", "maxLength": 64}, "target": {"type": "string", "maxLength": 64},
           "since": {"type": "string", "format": "date-time"}}
PAGE_PARAMS = {"q": {"type": "string", "maxLength": MAX_QUERY_CHARS}, **FILTERS}
API_PARAMS = {"q": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}, **FILTERS,
              "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}}
HIT = {"type": "object", "properties": {
    "session_id": {"type": "string"}, "user": {"type": "string"}, "target": {"type": "string"},
    "account": {"type": "string"}, "session_kind": {"type": "string"}, "kind": {"enum": ["command", "output"]},
    "offset": {"type": "number"}, "text": {"type": "string"}, "started_at": {"type": "string"},
    "time": {"type": "string"}, "replay": {"type": "string"}}}
RESPONSE = {"type": "object", "properties": {"hits": {"type": "array", "items": HIT},
                                             "sessions_scanned": {"type": "integer"},
                                             "complete": {"type": "boolean"}}}


def _name(value: str, what: str) -> str | None:
    if not value:
        return None
    # Names never hold control characters; refusing them keeps them out of SQL and the audit log.
    if len(value) > 64 or not value.isprintable():
        raise web.HTTPBadRequest(text=f"{what} is not a valid name")
    return value


async def _search(request: web.Request) -> SearchOutcome:
    params = request.query
    text = params.get("q", "")
    if not text.strip():
        raise web.HTTPBadRequest(text="give q, the text to search for")
    limit_text = params.get("limit", "50")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise web.HTTPBadRequest(text=f"limit must be a number from 1 to {MAX_LIMIT}")
    who = caller(request)
    try:
        return await search_sessions(request.app[render.SERVICES], text, user=_name(params.get("user", ""), "user"),
                                     target=_name(params.get("target", ""), "target"),
                                     since=parse_since(params.get("since")), limit=int(limit_text),
                                     actor=who.user.name, source=who.source_addr)
    except UsageError as exc:
        raise web.HTTPBadRequest(text=exc.safe_message) from None


async def search_page(request: web.Request) -> web.Response:
    outcome: SearchOutcome | None = None
    error = ""
    if request.query.get("q", "").strip():
        try:
            outcome = await _search(request)
        except web.HTTPBadRequest as exc:
            error = exc.text or "bad search"
    return render.page(request, "audit_search.html", status=400 if error else 200, query=request.query,
                       outcome=outcome, error=error, max_sessions=MAX_SESSIONS_SCANNED)


async def search_api(request: web.Request) -> web.Response:
    outcome = await _search(request)
    body: dict[str, Any] = {"hits": outcome.hits, "sessions_scanned": outcome.sessions_scanned,
                            "complete": outcome.complete}
    return web.json_response(body)


ROUTES = [
    Route("GET", "/audit/search", search_page, Access.AUDITOR, "Search sessions by command or output",
          params=PAGE_PARAMS),
    Route("GET", "/api/v1/audit/search", search_api, Access.AUDITOR,
          "Search recorded sessions by a command typed or by output text (case-insensitive substring); "
          "each hit names the session and the offset to replay from", scope="audit:read", params=API_PARAMS,
          response=RESPONSE),
]
