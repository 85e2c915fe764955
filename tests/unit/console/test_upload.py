"""The streamed multipart reader: fields first, the file part last and unread, bounded fields, clear refusals."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bastion.console.render import EXTRA_CSP
from bastion.console.upload import MAX_FIELD_BYTES, declared_size, fields_then_file

ALLOWED = frozenset({"name", "size"})


async def _echo(request: web.Request) -> web.Response:
    try:
        fields, part = await fields_then_file(request, ALLOWED)
    except web.HTTPBadRequest as exc:
        return web.json_response({"error": exc.text}, status=400)
    # The part arrives unread: the handler streams it (here only counted, chunk by chunk).
    total = 0
    while piece := await part.read_chunk(1024):
        total += len(piece)
    return web.json_response({"fields": fields, "filename": part.filename, "bytes": total})


@pytest.fixture
async def client():
    app = web.Application()
    app.router.add_post("/", _echo)
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    yield test_client
    await test_client.close()


def form(*parts: tuple[str, object, str | None]) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value, filename in parts:
        if filename is None:
            data.add_field(name, value)
        else:
            data.add_field(name, value, filename=filename, content_type="application/octet-stream")
    return data


async def _post(client, data) -> tuple[int, dict]:
    response = await client.post("/", data=data)
    return response.status, await response.json()


async def test_fields_then_the_file_streamed(client):
    status, body = await _post(client, form(("name", "people", None), ("size", "5", None),
                                            ("file", b"x" * 70000, "a.csv")))
    assert status == 200
    assert body == {"fields": {"name": "people", "size": "5"}, "filename": "a.csv", "bytes": 70000}


@pytest.mark.parametrize("parts, message", [
    ([("name", "x", None)], "holds no file"),
    ([("colour", "red", None), ("file", b"x", "a.csv")], "unknown form field: 'colour'"),
    ([("name", "a", None), ("name", "b", None), ("file", b"x", "a.csv")], "form field name given twice"),
    ([("name", "x" * (MAX_FIELD_BYTES + 1), None), ("file", b"x", "a.csv")], "longer than 8192 bytes"),
    ([("name", b"\xff\xfe", "n.bin")], "form field name is not UTF-8 text"),
])
async def test_refusals_are_clear(client, parts, message):
    status, body = await _post(client, form(*parts))
    assert status == 400 and message in body["error"], body


async def test_a_malformed_body_is_a_400_not_a_crash(client):
    response = await client.post("/", data=b"--nope\r\nContent-Disposition: form-data; name=\"\x10\"\r\n\r\n",
                                 headers={"Content-Type": "multipart/form-data; boundary=nope"})
    assert response.status == 400
    response = await client.post("/", data=b"plain", headers={"Content-Type": "multipart/form-data"})
    assert response.status == 400 and "malformed multipart body" in (await response.json())["error"]


def test_declared_size():
    assert declared_size({}) is None and declared_size({"size": ""}) is None
    assert declared_size({"size": "123"}) == 123
    for bad in ("-1", "1e3", "12a", "9" * 20):
        with pytest.raises(web.HTTPBadRequest):
            declared_size({"size": bad})


def test_the_view_csp_allows_no_script_no_fetch_and_only_its_own_style():
    csp = EXTRA_CSP["view"]("abc")
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'none'" and directives["connect-src"] == "'none'"
    assert directives["style-src"] == "'self' 'nonce-abc'" and directives["img-src"] == "data:"
    assert directives["default-src"] == "'none'" and directives["form-action"] == "'none'"
    assert "unsafe" not in csp
