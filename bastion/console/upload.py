"""Streamed multipart uploads: small form fields first, then the file part, handed on without buffering."""

from __future__ import annotations

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

MAX_FIELD_BYTES = 8192


async def _field(part: BodyPartReader) -> str:
    """A small text field, read with a bound (a hostile field must not grow in memory)."""
    data = bytearray()
    while piece := await part.read_chunk(4096):
        data += piece
        if len(data) > MAX_FIELD_BYTES:
            raise web.HTTPBadRequest(text=f"form field {part.name} is longer than {MAX_FIELD_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text=f"form field {part.name} is not UTF-8 text") from None


async def fields_then_file(request: web.Request, allowed: frozenset[str]) -> tuple[dict[str, str], BodyPartReader]:
    """Read the form fields in `allowed`, then return them with the (unread) part named "file".

    The file must come last: everything the catalog checks before reading a byte (name, size, owner) is
    known by then, so a refused upload is refused before its body is stored anywhere.
    """
    try:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        while True:
            part = await reader.next()
            if part is None:
                raise web.HTTPBadRequest(text="the upload holds no file (a part named \"file\", sent last)")
            if not isinstance(part, BodyPartReader):
                raise web.HTTPBadRequest(text="nested multipart bodies are not accepted")
            if part.name == "file":
                if not part.filename:
                    raise web.HTTPBadRequest(text="the file part has no file name")
                return fields, part
            if part.name not in allowed:
                raise web.HTTPBadRequest(text=f"unknown form field: {str(part.name)[:40]!r}")
            if part.name in fields:
                raise web.HTTPBadRequest(text=f"form field {part.name} given twice")
            fields[part.name] = await _field(part)
    except (ValueError, AssertionError, KeyError, HttpProcessingError) as exc:
        # aiohttp's complaints about a malformed body (boundary, headers); never echo the body itself.
        raise web.HTTPBadRequest(text=f"malformed multipart body ({type(exc).__name__})") from None


def declared_size(fields: dict[str, str]) -> int | None:
    """The size the browser declared for the file (lets a cut-off upload be told from a short file)."""
    raw = fields.get("size", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise web.HTTPBadRequest(text="size must be a number of bytes")
    return int(raw)
