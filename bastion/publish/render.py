"""Server-side views: CSV/TSV pages, text lines, re-encoded watermarked images; raw bytes never leave.

Everything here is blocking and works on a seekable binary file object (a `BlobReader`, or any file in
tests); callers run it in a thread. Results are plain data for a template to escape, never markup.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import math
import mimetypes
import posixpath
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, TypeVar

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError, features

from bastion.publish import masking
from bastion.publish.errors import RenderError

TABLE, TEXT, IMAGE, NONE = "table", "text", "image", "none"
_T = TypeVar("_T")
_MEDIA_TYPES = {
    ".csv": "text/csv", ".tsv": "text/tab-separated-values", ".tab": "text/tab-separated-values",
    ".txt": "text/plain", ".log": "text/plain", ".text": "text/plain", ".md": "text/markdown",
    ".json": "application/json", ".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
}
_KINDS = {"text/csv": TABLE, "text/tab-separated-values": TABLE, "image/png": IMAGE, "image/jpeg": IMAGE,
          "application/json": TEXT, "application/x-ndjson": TEXT}
_SAMPLE = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one view may cost; every bound a hostile file could otherwise push."""

    max_line_chars: int = 1 << 20         # a CSV line longer than this is refused
    max_columns: int = 512
    max_scan_bytes: int = 1 << 30         # pages starting deeper than this into a file are refused
    text_line_chars: int = 2000           # longer text lines are shown as several lines
    max_image_pixels: int = 40_000_000    # checked before decoding (decompression bombs)
    max_image_side: int = 2048            # images are shown at most this large
    max_json_pretty: int = 1 << 20        # JSON up to this size is re-indented for reading


DEFAULT_LIMITS = Limits()


def media_type_for(path: str) -> str:
    ext = posixpath.splitext(path.lower())[1]
    return _MEDIA_TYPES.get(ext) or mimetypes.guess_type(path, strict=False)[0] or "application/octet-stream"


def view_kind(media_type: str) -> str:
    """TABLE, TEXT, IMAGE, or NONE (no viewer: never a raw fallback)."""
    if media_type in _KINDS:
        return _KINDS[media_type]
    return TEXT if media_type.startswith("text/") else NONE


# --- text decoding ---------------------------------------------------------------------------------------


def sniff_encoding(sample: bytes, complete: bool) -> str:
    """UTF-8 (with or without BOM), else GB18030 (a superset of GBK); anything else is refused."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\0" in sample:
        raise RenderError("the file is not text in UTF-8 or GB18030 (it looks like UTF-16 or binary data)")
    for encoding in ("utf-8", "gb18030"):
        try:
            # A sample may end inside a character: only a complete file must decode to the end.
            codecs.getincrementaldecoder(encoding)().decode(sample, final=complete)
            return encoding
        except UnicodeDecodeError:
            continue
    raise RenderError("the file is not text in UTF-8 or GB18030/GBK")


def _label(encoding: str) -> str:
    return {"utf-8-sig": "UTF-8", "utf-8": "UTF-8", "gb18030": "GB18030"}.get(encoding, encoding)


def _read(raw: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes: a raw file may return less per call."""
    out = bytearray()
    while len(out) < size and (piece := raw.read(size - len(out))):
        out += piece
    return bytes(out)


def _sample(raw: BinaryIO) -> tuple[bytes, bool]:
    raw.seek(0)
    sample = _read(raw, _SAMPLE + 1)
    raw.seek(0)
    return sample[:_SAMPLE], len(sample) <= _SAMPLE


def _text(raw: BinaryIO, encoding: str, errors: str, newline: str | None) -> io.TextIOWrapper:
    raw.seek(0)
    return io.TextIOWrapper(io.BufferedReader(raw, 64 * 1024), encoding=encoding, errors=errors, newline=newline)


def _release(text: io.TextIOWrapper) -> None:
    """Detach the wrappers so closing them never closes the caller's file."""
    text.detach().detach()


# --- tables ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TablePage:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    has_next: bool
    masked_columns: tuple[int, ...]
    encoding: str
    delimiter: str


def _delimiter(sample: bytes, encoding: str, tsv: bool) -> str:
    if tsv:
        return "\t"
    text = sample.decode(encoding, errors="ignore")
    cut = text.rfind("\n")
    try:
        return csv.Sniffer().sniff(text[:cut + 1][:16384] if cut >= 0 else text[:16384], delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _bounded_lines(text: io.TextIOWrapper, limit: int) -> Iterator[str]:
    while line := text.readline(limit + 1):
        if len(line) > limit and not line.endswith(("\n", "\r")):
            raise RenderError(f"a line is longer than {limit} characters")
        yield line


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _table_rows(raw: BinaryIO, tsv: bool, limits: Limits) -> Iterator[tuple[str, str, int, list[str]]]:
    """(encoding, delimiter, line number, fields) of every non-blank row, header first; errors are RenderError."""
    sample, complete = _sample(raw)
    if not sample:
        raise RenderError("the file is empty: there is no table to show")
    encoding = sniff_encoding(sample, complete)
    delimiter = _delimiter(sample, encoding, tsv)
    text = _text(raw, encoding, "strict", "")
    # TSV has no quoting (IANA text/tab-separated-values): a field starting with '"' is just text there,
    # and must not swallow the lines after it.
    quoting = {"quoting": csv.QUOTE_NONE} if tsv else {}
    reader = csv.reader(_bounded_lines(text, limits.max_line_chars), delimiter=delimiter, strict=True, **quoting)
    width = None
    try:
        for row in reader:
            if _blank(row):
                continue
            if width is None:
                width = len(row)
                if width > limits.max_columns:
                    raise RenderError(f"the table has {width} columns; at most {limits.max_columns} can be shown")
            elif len(row) != width:
                raise RenderError(f"malformed CSV: line {reader.line_num} has {len(row)} fields, "
                                  f"the header has {width}")
            yield encoding, delimiter, reader.line_num, row
    except csv.Error as exc:
        # csv's messages name the rule broken, never the data.
        raise RenderError(f"malformed CSV at line {reader.line_num + 1}: {exc}") from None
    except UnicodeDecodeError:
        raise RenderError(f"the file is not valid {_label(encoding)} text (near line {reader.line_num + 1})") \
            from None
    finally:
        _release(text)
    if width is None:
        raise RenderError("the file holds no rows: there is no table to show")


def _window(items: Iterable[_T], raw: BinaryIO, start: int, per_page: int, limits: Limits) -> tuple[list[_T], bool]:
    """Items [start, start + per_page) and whether more follow; skipping to them may read at most
    `limits.max_scan_bytes` of `raw`."""
    shown: list[_T] = []
    for index, item in enumerate(items):
        if index < start:
            if raw.tell() > limits.max_scan_bytes:
                raise RenderError("this page lies too deep in a very large file to be shown")
            continue
        if index >= start + per_page:
            return shown, True
        shown.append(item)
    return shown, False


def table_page(raw: BinaryIO, *, tsv: bool, page: int, per_page: int, mask: str = "none",
               limits: Limits = DEFAULT_LIMITS) -> TablePage:
    """Rows [(page-1)*per_page, page*per_page) under the header, masked by `mask` before they leave."""
    with contextlib.closing(_table_rows(raw, tsv, limits)) as parsed:
        encoding, delimiter, _, header = next(parsed)  # _table_rows refuses a table without a header row
        rows, has_next = _window((tuple(row) for *_, row in parsed), raw, (page - 1) * per_page, per_page, limits)
    columns = masking.sensitive_columns(header, mask)
    return TablePage(masking.mask_row(header, {}, mask), tuple(masking.mask_row(r, columns, mask) for r in rows),
                     has_next, tuple(sorted(columns)), encoding, delimiter)


def validate_table(raw: BinaryIO, *, tsv: bool, limits: Limits = DEFAULT_LIMITS) -> int:
    """Parse a whole table (encoding, quoting, field counts); returns its data rows or raises RenderError."""
    count = -1
    for count, _ in enumerate(_table_rows(raw, tsv, limits)):
        pass
    return max(count, 0)


# --- text ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextPage:
    lines: tuple[str, ...]
    has_next: bool
    encoding: str


# A display line cut inside a number or an address would split it past the masker, which then sees two
# harmless halves: long lines are cut only where no number (digits joined by single separators, a final X)
# and no e-mail address can run across the cut.
_NUMBER_JOINERS = frozenset(masking.SEPARATORS + "Xx")
_EMAIL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-@")


def _numberish(ch: str) -> bool:
    return ch.isdecimal() or ch in _NUMBER_JOINERS


def _joined(left: str, right: str) -> bool:
    """Could one number or one e-mail address run across the boundary between these two characters?"""
    return (_numberish(left) and _numberish(right)) or (left in _EMAIL_CHARS and right in _EMAIL_CHARS)


def _joined_prefix(line: str) -> int:
    """Length of the run at the start of `line` that is joined to whatever came before it."""
    end = 1 if line else 0
    while end < len(line) and _joined(line[end - 1], line[end]):
        end += 1
    return end


def _segments(text: io.TextIOWrapper, width: int) -> Iterator[tuple[str, bool, bool]]:
    """Display lines of at most `width` characters: (line, cut inside a run at its start, ... at its end).

    A long line is cut at the last place no number or address crosses; only a run longer than the whole
    width is cut inside, and the caller hides that run completely on both sides of the cut.
    """
    carry, forced = "", False
    while True:
        piece = text.readline(max(1, width - len(carry)))
        if not piece:
            if carry:
                yield carry, forced, False
            return
        line = carry + piece
        carry = ""
        if line.endswith("\n"):
            yield line[:-1], forced, False
            forced = False
            continue
        if len(line) < width:  # the end of the file without a final newline
            carry = line
            continue
        cut = next((i for i in range(len(line) - 1, 0, -1) if not _joined(line[i - 1], line[i])), 0)
        if cut:
            yield line[:cut], forced, False
            carry, forced = line[cut:], False
        else:
            yield line, forced, True
            forced = True


def _masked_segment(line: str, cut_before: bool, cut_after: bool, mask: str) -> str:
    if mask == "none":
        return line
    line = masking.mask_text(line, mask)
    return _hide_run(line, cut_before, cut_after) if cut_before or cut_after else line


def _hide_run(line: str, at_start: bool, at_end: bool) -> str:
    """Star a run cut by a forced line break, whole, on the side(s) of `line` it touches."""
    chars = list(line)
    if at_start:
        for i in range(_joined_prefix(line)):
            if not chars[i].isspace():
                chars[i] = masking.STAR
    if at_end:
        for i in range(len(line) - _joined_prefix(line[::-1]), len(line)):
            if not chars[i].isspace():
                chars[i] = masking.STAR
    return "".join(chars)


def _wrap(line: str, width: int) -> list[str]:
    return [line[i:i + width] for i in range(0, len(line), width)] or [""]


def _masked_json_line(line: str, mask: str) -> str | None:
    """One NDJSON record with sensitive keys masked, or None when the line is not a JSON document."""
    try:
        document = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return json.dumps(masking.mask_json(document, mask), ensure_ascii=False)


def _ndjson_page(raw: BinaryIO, encoding: str, start: int, per_page: int, mask: str, limits: Limits) -> TextPage:
    """NDJSON under a mask: each whole record masked by its keys, then wrapped for display. A record too
    long to parse is masked whole, piece by piece (its keys cannot be seen, so nothing of it is trusted)."""
    text = _text(raw, encoding, "replace", None)
    lines: list[str] = []
    index, has_next, continuing = 0, False, False
    try:
        while not has_next and (record := text.readline(limits.max_json_pretty + 1)):
            whole = not continuing and (record.endswith("\n") or len(record) <= limits.max_json_pretty)
            continuing = not record.endswith("\n")
            record = record.rstrip("\n")
            masked = _masked_json_line(record, mask) if whole else None
            if masked is None:
                masked = masking.mask_text(record, mask) if whole else masking.mask_value(record)
            for piece in _wrap(masked, limits.text_line_chars):
                if index >= start + per_page:
                    has_next = True
                    break
                if index >= start:
                    lines.append(piece)
                index += 1
            if index < start and raw.tell() > limits.max_scan_bytes:
                raise RenderError("this page lies too deep in a very large file to be shown")
    finally:
        _release(text)
    return TextPage(tuple(lines), has_next, encoding)


def text_page(raw: BinaryIO, *, size: int, page: int, per_page: int, mask: str = "none", json_pretty: bool = False,
              ndjson: bool = False, limits: Limits = DEFAULT_LIMITS) -> TextPage:
    """Lines of a text, log or JSON file for one page (long lines wrapped), masked before they leave.

    Under a mask, JSON values are masked by their keys too (as table columns are by their headers); a
    JSON file too large to parse for that is refused rather than shown with free-text masking alone.
    """
    sample, complete = _sample(raw)
    if not sample:
        raise RenderError("the file is empty: there is nothing to show")
    encoding = sniff_encoding(sample, complete)
    start = (page - 1) * per_page
    if ndjson and mask != "none":
        return _ndjson_page(raw, encoding, start, per_page, mask, limits)
    if json_pretty and mask != "none" and size > limits.max_json_pretty:
        raise RenderError(f"this JSON file is larger than {limits.max_json_pretty} bytes and cannot be shown masked")
    if json_pretty and size <= limits.max_json_pretty:
        raw.seek(0)
        try:
            document = json.loads(_read(raw, size).decode(encoding))
        except (UnicodeDecodeError, ValueError, RecursionError):
            document = None  # not valid JSON after all: shown as plain text below (unmasked views only)
            if mask != "none":
                raise RenderError("this file is not valid JSON, so it cannot be shown masked") from None
        if document is not None:
            document = masking.mask_json(document, mask)
            lines = json.dumps(document, indent=2, ensure_ascii=False).splitlines()
            shown = []
            for line in lines[start:start + per_page]:
                # Masked whole, then wrapped to a bounded display width like plain text.
                shown.extend(_wrap(masking.mask_text(line, mask), limits.text_line_chars))
            return TextPage(tuple(shown), len(lines) > start + per_page, encoding)
    text = _text(raw, encoding, "replace", None)
    try:
        segments, has_next = _window(_segments(text, limits.text_line_chars), raw, start, per_page, limits)
    finally:
        _release(text)
    lines = [_masked_segment(line, cut_before, cut_after, mask) for line, cut_before, cut_after in segments]
    return TextPage(tuple(lines), has_next, encoding)


# --- images and watermarks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    media_type: str
    width: int
    height: int


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if features.check("freetype2"):
        return ImageFont.load_default(size=size)
    return ImageFont.load_default()


def _text_tile(text: str, size: int, ink: tuple[int, int, int, int], halo: tuple[int, int, int, int],
               angle: float) -> Image.Image:
    font = _font(size)
    stroke = max(1, size // 12)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font, stroke_width=stroke)
    pad = size // 2
    tile = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((pad - left, pad - top), text, font=font, fill=ink, stroke_width=stroke,
                              stroke_fill=halo)
    return tile.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)


def burn_watermark(image: Image.Image, text: str) -> Image.Image:
    """Write `text` over the whole image in diagonal rows, dark with a light halo, so no crop escapes it.

    The rows are drawn level on a canvas as large as the image's diagonal and the canvas is turned, so the
    gap between rows (about two and a half lines of text) is the largest watermark-free band anywhere.
    """
    base = image.convert("RGBA")
    size = max(12, min(base.size) // 28)
    font = _font(size)
    stroke = max(1, size // 12)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text + "   ", font=font, stroke_width=stroke)
    text_w, text_h = max(1, right - left), max(1, bottom - top)
    side = int(math.hypot(*base.size)) + 2
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, y in enumerate(range(0, side, max(1, text_h * 5 // 2))):
        shift = (row * text_w // 3) % text_w  # each row staggered, so columns of gaps do not line up
        for x in range(-shift, side, text_w):
            draw.text((x - left, y - top), text, font=font, fill=(0, 0, 0, 96), stroke_width=stroke,
                      stroke_fill=(255, 255, 255, 96))
    turned = canvas.rotate(30, resample=Image.Resampling.BICUBIC)
    x0, y0 = (side - base.width) // 2, (side - base.height) // 2
    return Image.alpha_composite(base, turned.crop((x0, y0, x0 + base.width, y0 + base.height)))


def render_image(raw: BinaryIO, *, watermark: str | None, limits: Limits = DEFAULT_LIMITS) -> RenderedImage:
    """Decode a PNG/JPEG (size checked first), shrink it for display, burn in the watermark, re-encode it.

    The output is a new image built from pixels alone: EXIF, ICC profiles and text chunks are not carried.
    """
    raw.seek(0)
    # Pillow expects whole reads; a raw file may return less per call, so it gets a buffered view.
    buffered = io.BufferedReader(raw, 256 * 1024)
    try:
        with Image.open(buffered, formats=("PNG", "JPEG")) as source:
            width, height = source.size
            if width * height > limits.max_image_pixels:
                raise RenderError(f"the image is too large to show ({width}x{height} pixels; "
                                  f"at most {limits.max_image_pixels})")
            fmt = source.format
            if fmt == "JPEG":  # decode at a reduced scale straight away (bounded memory for big photos)
                source.draft("RGB", (limits.max_image_side, limits.max_image_side))
            source.thumbnail((limits.max_image_side, limits.max_image_side))
            oriented = ImageOps.exif_transpose(source)
            alpha = oriented.mode in ("RGBA", "LA", "PA") or "transparency" in oriented.info
            pixels = oriented.convert("RGBA" if alpha else "RGB")
    except Image.DecompressionBombError:  # Pillow's own, far higher bound, checked while opening
        raise RenderError(f"the image is too large to show (at most {limits.max_image_pixels} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise RenderError("the image is damaged or is not a PNG or JPEG") from None
    finally:
        with contextlib.suppress(ValueError):
            buffered.detach()  # the caller's file stays open
    clean = Image.new(pixels.mode, pixels.size)
    clean.paste(pixels)
    if watermark:
        clean = burn_watermark(clean, watermark)
    out = io.BytesIO()
    if fmt == "JPEG" and not alpha:
        clean.convert("RGB").save(out, format="JPEG", quality=85)
        media_type = "image/jpeg"
    else:
        clean.save(out, format="PNG")
        media_type = "image/png"
    return RenderedImage(out.getvalue(), media_type, clean.width, clean.height)


def watermark_text(user: str, when: str, source: str, view_id: str) -> str:
    return f"{user} | {when} | {source} | {view_id}"


def watermark_png(text: str) -> bytes:
    """A small transparent PNG with `text` at an angle, for a page to tile behind a table or text."""
    tile = _text_tile(text, 15, (110, 110, 110, 70), (255, 255, 255, 0), 25)
    canvas = Image.new("RGBA", (tile.width + 40, tile.height + 30), (0, 0, 0, 0))
    canvas.paste(tile, (20, 15), tile)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()
