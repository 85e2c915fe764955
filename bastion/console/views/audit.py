"""Auditor pages: sessions, replay, live view, termination, and the audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import select

from bastion.admin import session_view
from bastion.audit.events import RecordingRead
from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.console.views.login import _body
from bastion.keys import load_node_key
from bastion.recorder import keyframes
from bastion.recorder.reader import iter_lines, verify
from bastion.recordings import list_audit
from bastion.store.models import Recording, Session

MAX_ROWS = 500
SESSION_ID = "{session_id:[0-9a-f-]{36}}"
TIME = {"type": "string", "format": "date-time"}
SESSIONS_PARAMS = {"user": {"type": "string"}, "target": {"type": "string"}, "status": {"enum": ["live", "ended"]},
                   "since": TIME, "until": TIME}


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise web.HTTPBadRequest(text="times must be ISO 8601") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


async def _sessions(request: web.Request) -> list[dict[str, Any]]:
    services = request.app[render.SERVICES]
    query = select(Session).order_by(Session.started_at.desc()).limit(MAX_ROWS)
    params = request.query
    if params.get("user"):
        query = query.where(Session.user_name == params["user"][:64])
    if params.get("target"):
        query = query.where(Session.target_name == params["target"][:64])
    if params.get("status") == "live":
        query = query.where(Session.ended_at.is_(None))
    elif params.get("status") == "ended":
        query = query.where(Session.ended_at.is_not(None))
    elif params.get("status"):
        raise web.HTTPBadRequest(text="status must be live or ended")
    since, until = _time(params.get("since")), _time(params.get("until"))
    if since:
        query = query.where(Session.started_at >= since)
    if until:
        query = query.where(Session.started_at <= until)
    async with services.db() as db:
        rows = (await db.execute(query)).scalars().all()
    live_here = {live.id for live in services.sessions.live()}
    return [{**session_view(s), "watchable": s.id in live_here} for s in rows]


async def sessions_page(request: web.Request) -> web.Response:
    return render.page(request, "audit_sessions.html", sessions=await _sessions(request), query=request.query)


async def sessions_api(request: web.Request) -> web.Response:
    return web.json_response(await _sessions(request))


async def _session(request: web.Request) -> Session:
    async with request.app[render.SERVICES].db() as db:
        row = await db.get(Session, request.match_info["session_id"])
    if row is None:
        raise web.HTTPNotFound()
    return row


async def replay_page(request: web.Request) -> web.Response:
    row = await _session(request)
    return render.page(request, "audit_replay.html", csp="player", session=session_view(row))


async def cast(request: web.Request) -> web.Response:
    """The verified, decrypted asciicast of a session (reading it is itself audited)."""
    services = request.app[render.SERVICES]
    who = caller(request)
    row = await _session(request)
    async with services.db() as db:
        recording = (await db.execute(select(Recording).where(Recording.session_id == row.id))).scalar_one_or_none()
    if recording is None:
        raise web.HTTPNotFound()
    await services.audit.emit(RecordingRead(actor=who.user.name, source=who.source_addr, session_id=row.id,
                                            target=row.target_name, purpose="replay"))
    public = load_node_key(services.config.keys_dir).public_key()
    try:
        start = max(0.0, float(request.query.get("from", "0")))
    except ValueError:
        raise web.HTTPBadRequest(text="from must be a number of seconds") from None
    lines, report = await asyncio.to_thread(_load_cast, Path(recording.path), services.vault, public, start)
    header = json.loads(lines[0]) if lines else {"version": 2, "width": 80, "height": 24}
    if not report.ok and report.status != "sealed":
        header["bastion_verification"] = f"{report.status}: {report.reason}"
    body = "\n".join([json.dumps(header)] + list(lines[1:])) + "\n"
    return web.Response(text=body, content_type="application/x-asciicast")


def _load_cast(path: Path, vault: Any, public: Any, start: float = 0.0) -> tuple[list[str], Any]:
    # A live or crashed recording is unsealed: its verified prefix is shown, and marked. A start time
    # uses the nearest keyframe, so a long session opens at its end without replaying all of it.
    report = verify(path, public)
    if start > 0:
        return list(keyframes.lines_from(path, vault, public, start)), report
    return list(iter_lines(path, vault, public, force=True)), report


async def terminate(request: web.Request) -> web.Response:
    services = request.app[render.SERVICES]
    who = caller(request)
    body = await _body(request)
    reason = body.get("reason") if isinstance(body.get("reason"), str) and body["reason"].strip() else \
        "no reason given"
    row = await _session(request)
    message = f"terminated by auditor {who.user.name}: {reason[:200]}"
    if not await services.sessions.request_kill(row.id, message):
        return web.json_response({"error": "the session has already ended"}, status=409)
    from bastion.audit.events import AdminChange

    await services.audit.emit(AdminChange(actor=who.user.name, source=who.source_addr, target=row.target_name,
                                          session_id=row.id, action="session.terminate", object=row.id,
                                          after={"reason": reason[:200]}))
    return web.json_response({"terminated": row.id})


async def live_page(request: web.Request) -> web.Response:
    row = await _session(request)
    return render.page(request, "audit_live.html", csp="terminal", session=session_view(row))


class _Watcher(asyncio.Queue):
    """A live viewer's bounded event queue; overflow drops the viewer instead of slowing the session."""

    def __init__(self) -> None:
        super().__init__(maxsize=2048)
        self.overflowed = False

    def put_nowait_overflow(self) -> None:
        self.overflowed = True


async def live_socket(request: web.Request) -> web.StreamResponse:
    services = request.app[render.SERVICES]
    who = caller(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    live = services.sessions.get(request.match_info["session_id"])
    if live is None:
        await ws.send_str(json.dumps({"type": "error", "message": "the session is not live on this node"}))
        await ws.close(code=4004)
        return ws
    await services.audit.emit(RecordingRead(actor=who.user.name, source=who.source_addr, session_id=live.id,
                                            target=live.target, purpose="live view"))
    watcher = _Watcher()
    live.watchers.add(watcher)
    await ws.send_str(json.dumps({"type": "start", "width": live.width, "height": live.height,
                                  "user": live.user, "target": live.target}))
    reader = asyncio.get_running_loop().create_task(ws.receive())  # read-only: input is never forwarded
    try:
        while not live.ended and not ws.closed:
            getter = asyncio.ensure_future(watcher.get())
            done, _ = await asyncio.wait({getter, reader}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                getter.cancel()
                break
            if getter not in done:
                getter.cancel()
                continue
            kind, data = getter.result()
            if kind == "o":
                await ws.send_bytes(data)
            else:
                await ws.send_str(json.dumps({"type": "resize", "size": data}))
            if watcher.overflowed:
                await ws.send_str(json.dumps({"type": "error", "message": "viewer too slow; reconnect"}))
                break
        if live.ended:
            await ws.send_str(json.dumps({"type": "end", "reason": live.end_reason}))
    finally:
        live.watchers.discard(watcher)
        reader.cancel()
        await ws.close()
    return ws


async def log_page(request: web.Request) -> web.Response:
    events = await _events(request)
    return render.page(request, "audit_log.html", events=events, query=request.query)


async def _events(request: web.Request) -> list[dict[str, Any]]:
    services = request.app[render.SERVICES]
    kind = request.query.get("type", "")[:64] or None
    actor = request.query.get("actor", "")[:128]
    who = caller(request)
    rows = await list_audit(services, kind, 2000, actor=who.user.name, source=who.source_addr, purpose="search")
    if actor:
        rows = [r for r in rows if r["actor"] == actor]
    text = request.query.get("q", "")[:128].lower()
    if text:
        rows = [r for r in rows if text in json.dumps(r, ensure_ascii=False).lower()]
    return rows[:MAX_ROWS]


async def events_api(request: web.Request) -> web.Response:
    return web.json_response(await _events(request))


async def export(request: web.Request) -> web.StreamResponse:
    services = request.app[render.SERVICES]
    who = caller(request)
    rows = await list_audit(services, None, 100000, actor=who.user.name, source=who.source_addr, purpose="export")
    body = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in reversed(rows))
    return web.Response(text=body, content_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'})


ROUTES = [
    Route("GET", "/audit/sessions", sessions_page, Access.AUDITOR, "Sessions", params=SESSIONS_PARAMS),
    Route("GET", f"/audit/sessions/{SESSION_ID}", replay_page, Access.AUDITOR, "Replay a session"),
    Route("GET", f"/audit/sessions/{SESSION_ID}/live", live_page, Access.AUDITOR, "Watch a live session"),
    Route("GET", "/audit/log", log_page, Access.AUDITOR, "Audit log search",
          params={"type": {"type": "string"}, "actor": {"type": "string"}, "q": {"type": "string"}}),
    Route("GET", "/api/v1/audit/sessions", sessions_api, Access.AUDITOR, "List sessions", scope="audit:read",
          params=SESSIONS_PARAMS, response={"type": "array"}),
    Route("GET", f"/api/v1/audit/sessions/{SESSION_ID}/cast", cast, Access.AUDITOR,
          "The session's recording as verified asciicast v2 (from=SECONDS starts at the nearest keyframe)",
          scope="audit:read", params={"from": {"type": "number", "minimum": 0}}),
    Route("POST", f"/api/v1/audit/sessions/{SESSION_ID}/terminate", terminate, Access.AUDITOR,
          "Terminate a live session", scope="audit:write",
          body={"type": "object", "additionalProperties": False,
                "properties": {"reason": {"type": "string", "maxLength": 256}}}),
    Route("GET", f"/api/v1/audit/sessions/{SESSION_ID}/live", live_socket, Access.AUDITOR,
          "Live view websocket (read-only)", websocket=True),
    Route("GET", "/api/v1/audit/events", events_api, Access.AUDITOR, "Search the audit log", scope="audit:read",
          params={"type": {"type": "string"}, "actor": {"type": "string"}, "q": {"type": "string"}},
          response={"type": "array"}),
    Route("GET", "/api/v1/audit/export", export, Access.AUDITOR, "Export the audit log as JSON lines",
          scope="audit:read"),
]
