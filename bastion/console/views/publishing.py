"""Publishing in the console: datasets, streamed uploads, publish windows, grants, download approvals."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bastion.console import render
from bastion.console.context import caller
from bastion.console.routes import Access, Route
from bastion.console.upload import declared_size, fields_then_file
from bastion.console.views.admin import _opt, _run
from bastion.console.views.datasets import DATASET
from bastion.console.views.login import _body
from bastion.errors import NotFound
from bastion.policy import DATASET_MODES
from bastion.publish.catalog import CLASSIFICATIONS, Catalog
from bastion.publish.masking import PROFILES

EMPTY = {"type": "object", "additionalProperties": False}
TIME = {"type": "string", "maxLength": 64}
NEW_FIELDS = frozenset({"name", "classification", "description", "owner", "size"})
VERSION_FIELDS = frozenset({"size"})
UPLOAD_SIZE = {"type": "string", "pattern": "^[0-9]{1,19}$", "description": "the file's size in bytes (optional; "
               "lets a cut-off upload be told apart)"}
FILE = {"type": "string", "format": "binary"}


def catalog(request: web.Request) -> Catalog:
    who = caller(request)
    return Catalog.from_services(request.app[render.SERVICES], actor=who.user.name, source=who.source_addr)


# --- pages ------------------------------------------------------------------------------------------------


async def list_page(request: web.Request) -> web.Response:
    return render.page(request, "admin_datasets.html", datasets=await catalog(request).list(),
                       classifications=CLASSIFICATIONS)


async def dataset_page(request: web.Request) -> web.Response:
    try:
        shown = await catalog(request).show(request.match_info["dataset"])
    except NotFound:
        raise web.HTTPNotFound() from None
    return render.page(request, "admin_dataset.html", dataset=shown, modes=DATASET_MODES, masks=PROFILES)


async def requests_page(request: web.Request) -> web.Response:
    items = await catalog(request).requests(decider=caller(request).user.name)
    return render.page(request, "dataset_requests.html", requests=items)


# --- API --------------------------------------------------------------------------------------------------


async def list_api(request: web.Request) -> web.Response:
    return await _run(catalog(request).list())


async def show_api(request: web.Request) -> web.Response:
    return await _run(catalog(request).show(request.match_info["dataset"]))


async def upload_new(request: web.Request) -> web.Response:
    """A new dataset from one file, streamed from the request body into the blob store."""
    fields, part = await fields_then_file(request, NEW_FIELDS)
    return await _run(catalog(request).add_upload(
        fields.get("name", ""), part.filename or "", part, size=declared_size(fields),
        classification=fields.get("classification") or "internal", description=fields.get("description") or None,
        owner=fields.get("owner") or None))


async def upload_version(request: web.Request) -> web.Response:
    fields, part = await fields_then_file(request, VERSION_FIELDS)
    return await _run(catalog(request).update_upload(request.match_info["dataset"], part.filename or "", part,
                                                     size=declared_size(fields)))


async def publish(request: web.Request) -> web.Response:
    body = await _body(request)
    return await _run(catalog(request).publish(request.match_info["dataset"], _opt(body, "from", str),
                                               _opt(body, "until", str)))


async def unpublish(request: web.Request) -> web.Response:
    return await _run(catalog(request).unpublish(request.match_info["dataset"]))


async def grant(request: web.Request) -> web.Response:
    body = await _body(request)
    return await _run(catalog(request).grant(
        request.match_info["dataset"], user=_opt(body, "user", str), group=_opt(body, "group", str),
        mode=_opt(body, "mode", str, "view"), until=_opt(body, "until", str),
        max_downloads=_opt(body, "max_downloads", int), min_level=_opt(body, "min_level", int),
        mask=_opt(body, "mask", str, "none"), watermark=_opt(body, "watermark", bool, True)))


async def revoke(request: web.Request) -> web.Response:
    return await _run(catalog(request).revoke(int(request.match_info["grant_id"])))


async def requests_api(request: web.Request) -> web.Response:
    return await _run(catalog(request).requests(decider=caller(request).user.name))


async def decide(request: web.Request) -> web.Response:
    """An admin, or the dataset's owner, approves or refuses a download request, with a reason."""
    body = await _body(request)
    approve = _opt(body, "approve", bool)
    if approve is None:
        raise web.HTTPBadRequest(text="approve (true or false) is required")
    result: Any = await _run(catalog(request).decide(int(request.match_info["request_id"]), approve,
                                                     _opt(body, "reason", str, ""), decider=caller(request).user.name))
    if result.status == 404:
        raise web.HTTPNotFound()  # someone else's request, or none: the same answer
    return result


GRANT_BODY = {"type": "object", "additionalProperties": False, "required": ["mode"],
              "properties": {"user": {"type": "string", "minLength": 1, "maxLength": 64},
                             "group": {"type": "string", "minLength": 1, "maxLength": 32},
                             "mode": {"enum": list(DATASET_MODES)}, "until": TIME,
                             "max_downloads": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                             "min_level": {"type": "integer", "minimum": 1, "maximum": 3},
                             "mask": {"enum": list(PROFILES)}, "watermark": {"type": "boolean"}}}
ROUTES = [
    Route("GET", "/admin/datasets", list_page, Access.ADMIN, "Publishing: datasets"),
    Route("GET", f"/admin/datasets/{DATASET}", dataset_page, Access.ADMIN, "Publishing: one dataset"),
    Route("GET", "/dataset-requests", requests_page, Access.AUTHENTICATED,
          "Download requests I may decide (admins, and datasets' owners)", min_level=2),
    Route("GET", "/api/v1/admin/datasets", list_api, Access.ADMIN, "List datasets", scope="admin:read",
          response={"type": "array"}),
    Route("POST", "/api/v1/admin/datasets", upload_new, Access.ADMIN,
          "Upload a new dataset (one file, streamed; the file part last)", scope="admin:write",
          form={"type": "object", "required": ["name", "file"],
                "properties": {"name": {"type": "string", "maxLength": 63},
                               "classification": {"enum": list(CLASSIFICATIONS)},
                               "description": {"type": "string", "maxLength": 4000},
                               "owner": {"type": "string", "maxLength": 64}, "size": UPLOAD_SIZE, "file": FILE}},
          response={"type": "object"}),
    Route("GET", f"/api/v1/admin/datasets/{DATASET}", show_api, Access.ADMIN,
          "A dataset: files, versions, grants", scope="admin:read", response={"type": "object"}),
    Route("POST", f"/api/v1/admin/datasets/{DATASET}/versions", upload_version, Access.ADMIN,
          "Upload a new version of a dataset (one file, streamed; the file part last)", scope="admin:write",
          form={"type": "object", "required": ["file"], "properties": {"size": UPLOAD_SIZE, "file": FILE}},
          response={"type": "object"}),
    Route("POST", f"/api/v1/admin/datasets/{DATASET}/publish", publish, Access.ADMIN,
          "Publish a dataset, optionally from/until a time (ISO 8601)", scope="admin:write",
          body={"type": "object", "additionalProperties": False, "properties": {"from": TIME, "until": TIME}}),
    Route("POST", f"/api/v1/admin/datasets/{DATASET}/unpublish", unpublish, Access.ADMIN,
          "Unpublish a dataset", scope="admin:write", body=EMPTY),
    Route("POST", f"/api/v1/admin/datasets/{DATASET}/grants", grant, Access.ADMIN,
          "Grant a user or a group view, download or download-with-approval", scope="admin:write",
          body=GRANT_BODY),
    Route("POST", "/api/v1/admin/dataset-grants/{grant_id:[0-9]{1,9}}/revoke", revoke, Access.ADMIN,
          "Revoke a dataset grant", scope="admin:write", body=EMPTY),
    Route("GET", "/api/v1/dataset-requests", requests_api, Access.AUTHENTICATED,
          "Download requests I may decide, newest first", min_level=2, response={"type": "array"}),
    Route("POST", "/api/v1/dataset-requests/{request_id:[0-9]{1,9}}/decide", decide, Access.AUTHENTICATED,
          "Approve or refuse a download request, with a reason (admins, and the dataset's owner)", min_level=2,
          body={"type": "object", "additionalProperties": False, "required": ["approve", "reason"],
                "properties": {"approve": {"type": "boolean"}, "reason": {"type": "string", "minLength": 1,
                                                                           "maxLength": 512}}}),
]
