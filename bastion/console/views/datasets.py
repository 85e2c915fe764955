"""A user's datasets: the list granted now, a dataset's files, rendered views, downloads, approval requests."""

from __future__ import annotations

import base64
import logging
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import select

from bastion.auth.identity import Identity
from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.errors import NotFound, UsageError
from bastion.policy import AllowDataset, DatasetAuthorization, StepUp
from bastion.publish import access
from bastion.publish.catalog import Catalog, request_state
from bastion.publish.errors import Refused, RenderError
from bastion.store.models import Dataset, DatasetGrant, DownloadRequest

log = logging.getLogger("bastion.console")

DATASET = "{dataset:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}}"
EMPTY = {"type": "object", "additionalProperties": False}
FILE_PARAMS = {"path": {"type": "string", "minLength": 1, "maxLength": 1024}}
VIEW_PARAMS = {**FILE_PARAMS, "page": {"type": "integer", "minimum": 1, "maximum": access.MAX_PAGE}}
DECISION = {"type": "object", "properties": {"allowed": {"type": "boolean"}, "step_up": {"type": ["integer", "null"]}}}
LIST_SCHEMA = {"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string"}, "classification": {"type": "string"}, "description": {"type": "string"},
    "version": {"type": "integer"}, "view": DECISION, "download": DECISION,
    "download_mode": {"type": ["string", "null"]}, "request": {"type": ["object", "null"]}}}}
# Fetch metadata a browser sends with a download: only our own pages (or the address bar) may start one.
FETCH_SITES = ("same-origin", "none")


def _missing() -> web.HTTPNotFound:
    # Every refusal, whatever its reason, is the page a name that never existed gets.
    return web.HTTPNotFound()


def identity(request: web.Request) -> Identity:
    """The identity decisions are made for; an API token holds no level (dataset contents need a session)."""
    who = caller(request)
    if who.session is not None:
        return who.identity()
    return Identity(who.user.id, who.user.name, who.user.roles, who.user.groups, 0, (), who.source_addr)


async def _decide(request: web.Request, name: str, action: str,
                  path: str | None = None) -> AllowDataset | StepUp | None:
    services = request.app[render.SERVICES]
    decision = await services.policy.authorize_dataset(identity(request), name, action, services.clock.now(), path)
    return decision if isinstance(decision, (AllowDataset, StepUp)) else None


async def _authorize(request: web.Request, name: str, action: str, path: str | None = None) -> DatasetAuthorization:
    decision = await _decide(request, name, action, path)
    if not isinstance(decision, AllowDataset):
        raise _missing()  # below the level too: the list page offers the step-up, a direct link never tells
    return decision.authorization


def _path(request: web.Request) -> str | None:
    path = request.query.get("path")
    if path is None or path == "":
        return None
    if len(path) > 1024:
        raise _missing()
    return path


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    if not re.fullmatch(r"[0-9]{1,8}", raw) or not 1 <= int(raw) <= access.MAX_PAGE:
        raise web.HTTPBadRequest(text="page must be a positive number")
    return int(raw)


def _decision(decision: Any) -> dict[str, Any]:
    return {"allowed": isinstance(decision, AllowDataset),
            "step_up": decision.level if isinstance(decision, StepUp) else None}


async def _my_requests(request: web.Request) -> dict[str, dict[str, Any]]:
    """The caller's latest download request per dataset (status, decision, expiry)."""
    services = request.app[render.SERVICES]
    now = services.clock.now()
    async with services.db() as db:
        rows = (await db.execute(
            select(DownloadRequest, Dataset.name)
            .join(DatasetGrant, DownloadRequest.grant_id == DatasetGrant.id)
            .join(Dataset, DatasetGrant.dataset_id == Dataset.id)
            .where(DownloadRequest.user_id == caller(request).user.id)
            .order_by(DownloadRequest.id.desc()).limit(500))).all()
    latest: dict[str, dict[str, Any]] = {}
    for r, name in rows:
        latest.setdefault(name, {"id": r.id, "status": request_state(r, now), "reason": r.reason or None,
                                 "decided_by": r.decided_by or None,
                                 "expires_at": r.expires_at.isoformat() if r.expires_at else None})
    return latest


async def _listing(request: web.Request) -> list[dict[str, Any]]:
    services = request.app[render.SERVICES]
    granted = await services.policy.granted_datasets(identity(request), services.clock.now())
    requests = await _my_requests(request) if any(g.download_mode == "download-with-approval" for g in granted) \
        else {}
    out = []
    for g in granted:
        item = {"name": g.name, "classification": g.classification, "description": g.description,
                "version": g.version, "view": _decision(g.view), "download": _decision(g.download),
                "download_mode": g.download_mode, "request": requests.get(g.name), "files": []}
        allowed = g.view if isinstance(g.view, AllowDataset) else g.download
        if isinstance(allowed, AllowDataset):
            try:
                item["files"] = [{"path": f.path, "size": f.size, "viewer": f.viewer}
                                 for f in await access.files(services, allowed.authorization)]
            except NotFound:
                pass  # changed in between: listed without files, refused when opened
        out.append(item)
    return out


# --- pages ------------------------------------------------------------------------------------------------


async def list_page(request: web.Request) -> web.Response:
    return render.page(request, "datasets.html", datasets=await _listing(request))


async def dataset_page(request: web.Request) -> web.Response:
    return render.page(request, "dataset.html", **await _dataset(request))


async def _dataset(request: web.Request) -> dict[str, Any]:
    name = request.match_info["dataset"]
    services = request.app[render.SERVICES]
    view, download = await _decide(request, name, "view"), await _decide(request, name, "download")
    allowed = view if isinstance(view, AllowDataset) else download
    if not isinstance(allowed, AllowDataset):
        raise _missing()
    try:
        files = await access.files(services, allowed.authorization)
    except NotFound:
        raise _missing() from None
    item = next((d for d in await _listing(request) if d["name"] == name), None)
    return {"name": name, "dataset": item, "view": _decision(view), "download": _decision(download),
            "files": [{"path": f.path, "size": f.size, "viewer": f.viewer} for f in files]}


async def _view(request: web.Request) -> access.ViewResult | str:
    """One rendered page, or the safe message of a file that cannot be shown."""
    # Like downloads: a view counts against the daily rows and is audited in the viewer's name, so only
    # our own pages (or the address bar) may cause one, not an <img> on another site of the same domain.
    if request.headers.get("Sec-Fetch-Site", "none") not in FETCH_SITES:
        raise _missing()
    name, path, page = request.match_info["dataset"], _path(request), _page(request)
    authorization = await _authorize(request, name, "view")
    try:
        return await access.view(request.app[render.SERVICES], authorization, path, page)
    except NotFound:
        raise _missing() from None
    except UsageError as exc:
        raise web.HTTPBadRequest(text=exc.safe_message) from None
    except RenderError as exc:
        return exc.safe_message


def _b64(data: bytes | None) -> str:
    return base64.b64encode(data).decode("ascii") if data else ""


async def view_page(request: web.Request) -> web.Response:
    result = await _view(request)
    name = request.match_info["dataset"]
    if isinstance(result, str):
        return render.page(request, "dataset_view.html", status=422, csp="view", name=name, result=None,
                           error=result, tile="", image="", page_link=None)
    base = f"/datasets/{quote(name)}/view?path={quote(result.path, safe='')}&page="
    # No Content-Disposition, no-store (middleware), a CSP that allows no script and no fetch at all.
    return render.page(request, "dataset_view.html", csp="view", name=name, result=result, error="",
                       tile=_b64(result.watermark_png), image=_b64(result.image), page_link=base)


async def view_api(request: web.Request) -> web.Response:
    result = await _view(request)
    if isinstance(result, str):
        return web.json_response({"error": result}, status=422)
    return web.json_response({
        "dataset": result.dataset, "version": result.version, "path": result.path, "media_type": result.media_type,
        "kind": result.kind, "page": result.page, "per_page": result.per_page, "has_next": result.has_next,
        "header": list(result.header), "rows": [list(r) for r in result.rows],
        "masked_columns": list(result.masked_columns), "lines": list(result.lines), "image": _b64(result.image),
        "image_type": result.image_type, "width": result.width, "height": result.height,
        "encoding": result.encoding, "mask": result.mask, "view_id": result.view_id,
        "watermark": result.watermark_text, "watermark_png": _b64(result.watermark_png), "notice": result.notice})


def _disposition(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:120] or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(base, safe='')}"


async def download(request: web.Request) -> web.StreamResponse:
    """Stream one file: counted and audited before the first byte, never buffered whole."""
    # SameSite=Strict already keeps the cookie off cross-site requests; fetch metadata refuses the rest
    # (a page of ours is the only thing that may start a download that uses up a quota or an approval).
    if request.headers.get("Sec-Fetch-Site", "none") not in FETCH_SITES:
        raise _missing()
    name, path = request.match_info["dataset"], _path(request)
    authorization = await _authorize(request, name, "download", path)
    services = request.app[render.SERVICES]
    try:
        stream, size, sha256 = await access.download(services, authorization, path)
    except NotFound:
        raise _missing() from None
    response = web.StreamResponse(status=200, headers={
        "Content-Type": "application/octet-stream", "Content-Disposition": _disposition(stream.path),
        "X-Content-SHA256": sha256, "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"})
    response.content_length = size
    async with stream:
        await response.prepare(request)
        try:
            async for piece in stream:
                await response.write(piece)
        except (ConnectionError, RuntimeError):
            return response  # the client left; the download was counted when it began
        except Refused:
            # Revoked, unpublished or disabled while streaming (audited by the serving boundary): cut short
            # of Content-Length, the only signal left once the headers are sent.
            if request.transport is not None:
                request.transport.close()
            return response
        except Exception:
            # Headers are gone: the only honest signal left is a connection cut short of Content-Length.
            log.exception("download of %s stopped", name)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
    return response


async def request_download(request: web.Request) -> web.Response:
    who = caller(request)
    catalog = Catalog.from_services(request.app[render.SERVICES], actor=who.user.name, source=who.source_addr)
    try:
        result = await catalog.request_download(who.user.name, request.match_info["dataset"])
    except NotFound:
        raise _missing() from None
    return web.json_response(result)


async def list_api(request: web.Request) -> web.Response:
    return web.json_response(await _listing(request))


async def dataset_api(request: web.Request) -> web.Response:
    found = await _dataset(request)
    return web.json_response({"name": found["name"], "view": found["view"], "download": found["download"],
                              "files": found["files"],
                              "request": found["dataset"]["request"] if found["dataset"] else None})


ROUTES = [
    Route("GET", "/datasets", list_page, Access.AUTHENTICATED, "Datasets granted to me"),
    Route("GET", f"/datasets/{DATASET}", dataset_page, Access.AUTHENTICATED, "A dataset's files"),
    Route("GET", f"/datasets/{DATASET}/view", view_page, Access.AUTHENTICATED,
          "View a file, rendered on the server (masked, watermarked)", params=VIEW_PARAMS),
    Route("GET", f"/datasets/{DATASET}/download", download, Access.AUTHENTICATED, "Download a file",
          params=FILE_PARAMS),
    Route("GET", "/api/v1/datasets", list_api, Access.AUTHENTICATED,
          "Datasets granted to me now, with what the policy says about viewing and downloading each",
          scope="me", response=LIST_SCHEMA),
    Route("GET", f"/api/v1/datasets/{DATASET}", dataset_api, Access.AUTHENTICATED,
          "A dataset's files (current version)", response={"type": "object"}),
    Route("GET", f"/api/v1/datasets/{DATASET}/view", view_api, Access.AUTHENTICATED,
          "One rendered page of a file: table rows, text lines or a watermarked image (base64)",
          params=VIEW_PARAMS, response={"type": "object"}),
    Route("GET", f"/api/v1/datasets/{DATASET}/download", download, Access.AUTHENTICATED,
          "Download a file (application/octet-stream; SHA-256 in X-Content-SHA256)", params=FILE_PARAMS),
    Route("POST", f"/api/v1/datasets/{DATASET}/request", request_download, Access.AUTHENTICATED,
          "Ask for a one-time download under a download-with-approval grant", body=EMPTY,
          response={"type": "object"}),
]
