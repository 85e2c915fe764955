"""Renderers: hostile CSV and text give a clear RenderError; images are rebuilt from pixels with the watermark
burned in everywhere; nothing here hands back the raw bytes."""

from __future__ import annotations

import codecs
import io
import json
import struct
import zlib

import pytest
from PIL import Image, ImageChops, PngImagePlugin

from bastion.publish import render
from bastion.publish.errors import RenderError
from bastion.publish.masking import id_check_char
from bastion.publish.render import Limits, render_image, table_page, text_page, validate_table

MARK = render.watermark_text("alice", "2026-11-28 12:00 UTC", "192.0.2.7", "abcd1234")


def table(data: bytes, page=1, per_page=10, tsv=False, mask="none", limits=render.DEFAULT_LIMITS):
    return table_page(io.BytesIO(data), tsv=tsv, page=page, per_page=per_page, mask=mask, limits=limits)


def text(data: bytes, page=1, per_page=100, mask="none", json_pretty=False, limits=render.DEFAULT_LIMITS):
    return text_page(io.BytesIO(data), size=len(data), page=page, per_page=per_page, mask=mask,
                     json_pretty=json_pretty, limits=limits)


# --- media types ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, kind", [
    ("a.csv", "table"), ("A.CSV", "table"), ("b.tsv", "table"), ("x/c.txt", "text"), ("d.log", "text"),
    ("e.json", "text"), ("f.png", "image"), ("g.JPEG", "image"), ("h.pdf", "none"), ("i.exe", "none"),
    ("noext", "none"), ("j.html", "text"), ("k.svg", "none"), ("l.gif", "none"),
])
def test_media_types_and_viewers(path, kind):
    assert render.view_kind(render.media_type_for(path)) == kind


# --- tables -----------------------------------------------------------------------------------------------


def test_csv_pages_and_has_next():
    data = b"id,city\n" + b"".join(b"%d,c%d\n" % (i, i) for i in range(25))
    first, last = table(data, page=1), table(data, page=3)
    assert first.header == ("id", "city") and first.rows[0] == ("0", "c0") and first.has_next
    assert [r[0] for r in last.rows] == ["20", "21", "22", "23", "24"] and not last.has_next
    exact = table(data, page=1, per_page=25)
    assert len(exact.rows) == 25 and not exact.has_next
    beyond = table(data, page=9)
    assert beyond.rows == () and not beyond.has_next
    assert validate_table(io.BytesIO(data), tsv=False) == 25


def test_quoted_fields_blank_lines_crlf_and_semicolons():
    data = b'name;note\r\n"Smith; J";"say ""hi""\nthere"\r\n\r\nLee;ok\r\n'
    page = table(data)
    assert page.delimiter == ";" and page.header == ("name", "note")
    assert page.rows == (("Smith; J", 'say "hi"\nthere'), ("Lee", "ok"))


def test_tsv():
    page = table(b"a\tb\n1\t2,3\n", tsv=True)
    assert page.delimiter == "\t" and page.rows == (("1", "2,3"),)


def test_utf8_bom_is_not_part_of_the_header():
    page = table(codecs.BOM_UTF8 + "名称,城市\n张三,北京\n".encode())
    assert page.header == ("名称", "城市") and page.encoding == "utf-8-sig"


def test_gb18030_text_is_decoded():
    page = table("名称,城市\n张三,北京\n".encode("gb18030"))
    assert page.encoding == "gb18030" and page.rows == (("张三", "北京"),)
    lines = text("日志：用户登录\n第二行\n".encode("gb18030"))
    assert lines.encoding == "gb18030" and lines.lines == ("日志：用户登录", "第二行")


@pytest.mark.parametrize("data, fragment", [
    (b"a,b\n1,2\n3\n", "line 3 has 1 fields"),                      # ragged
    (b"a,b\n1,2,3\n", "line 2 has 3 fields"),
    (b'a,b\n"1"x,2\n', "malformed CSV"),                            # bad quoting
    (b'a,b\n"unterminated,2\n', "malformed CSV"),
    (b"", "empty"),
    (b"\n\n  \n", "no rows"),
    ("a,b\n1,2\n".encode("utf-16"), "UTF-16"),
    ("a,b\n1,2\n".encode("utf-16-le"), "UTF-16"),                  # no BOM: NUL bytes
    (b"a,b\n\x00\x01\x02\xff,2\n", "binary"),
    (b"name,city\ncaf\xe9,x\n", "not text in UTF-8 or GB18030"),   # latin-1, invalid as GB18030 too
    (b"a," * 600 + b"a\n", "columns"),
])
def test_malformed_tables_give_a_clear_error(data, fragment):
    with pytest.raises(RenderError) as caught:
        table(data)
    assert fragment in caught.value.safe_message
    with pytest.raises(RenderError):
        validate_table(io.BytesIO(data), tsv=False)


def test_a_bad_byte_deep_in_a_big_file_is_found():
    data = b"a,b\n" + b"x,y\n" * 40_000 + b"caf\xe9,x\n"
    with pytest.raises(RenderError) as caught:
        validate_table(io.BytesIO(data), tsv=False)
    assert "UTF-8" in caught.value.safe_message and "line" in caught.value.safe_message


def test_a_huge_line_is_refused_not_buffered():
    limits = Limits(max_line_chars=1000)
    with pytest.raises(RenderError) as caught:
        table(b"a,b\n" + b"x" * 5000 + b",1\n", limits=limits)
    assert "longer than 1000" in caught.value.safe_message
    # A huge quoted field spread over many short lines is bounded by csv's field limit.
    with pytest.raises(RenderError):
        table(b'a,b\n"' + b"x\n" * 200_000 + b'",1\n')


def test_the_header_and_cells_are_masked_before_they_leave():
    ident = "11010519491231002"
    ident += id_check_char(ident)
    page = table(f"姓名,id,note\n张三丰,{ident},call 13812345678\n".encode(), mask="pii")
    assert page.masked_columns == (0, 1)
    assert page.rows == (("张**", "110***********002X", "call 138****5678"),)


# --- text -------------------------------------------------------------------------------------------------


def test_text_pages():
    data = b"".join(b"line %d\n" % i for i in range(250))
    one, three = text(data, page=1), text(data, page=3)
    assert one.lines[0] == "line 0" and len(one.lines) == 100 and one.has_next
    assert three.lines[-1] == "line 249" and len(three.lines) == 50 and not three.has_next
    assert text(b"no final newline", page=1).lines == ("no final newline",)
    assert text(b"a\r\nb\rc\n").lines == ("a", "b", "c")


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"),
    ("text\n".encode("utf-16"), "UTF-16"),
    (b"\x7fELF\x02\x01\x01\x00\x00", "binary"),
    (b"caf\xe9 au lait\n", "GB18030"),
])
def test_bad_text_gives_a_clear_error(data, fragment):
    with pytest.raises(RenderError) as caught:
        text(data)
    assert fragment in caught.value.safe_message


def test_long_lines_are_wrapped_and_nothing_is_lost():
    line = "".join(chr(ord("a") + i % 26) for i in range(7000))
    page = text((line + "\nnext\n").encode())
    assert all(len(piece) <= 2000 for piece in page.lines)
    assert "".join(page.lines[:-1]) == line and page.lines[-1] == "next"


def test_a_number_is_never_cut_in_half_by_the_wrap():
    ident = "11010519491231002"
    ident += id_check_char(ident)
    for offset in range(1800, 2000, 3):
        line = "中" * offset + " ID " + ident + " " + "word " * 50 + "\n"
        page = text(line.encode(), mask="pii")
        shown = "".join(page.lines)
        assert len(shown) == len(line) - 1
        assert ident not in shown and "*" * 11 in shown, offset
    # Also when the surrounding text is all letters and spaces (where a cut has to be searched for).
    for offset in range(1700, 2000, 5):
        line = "x " * (offset // 2) + ident + " and more words " * 20 + "\n"
        assert ident not in "".join(text(line.encode(), mask="pii").lines)


def test_a_run_longer_than_a_display_line_is_hidden_on_both_sides_of_the_cut():
    mobile = "13812345678"
    line = "a" * 1990 + mobile + "b" * 3000 + "\n"   # one unbroken run of letters and digits
    shown = text(line.encode(), mask="pii").lines
    assert mobile not in "".join(shown) and mobile[3:] not in "".join(shown)
    assert text(line.encode()).lines[0].startswith("a" * 1990)  # unmasked views are untouched


def test_json_is_pretty_printed_masked_and_wrapped():
    ident = "11010519491231002"
    ident += id_check_char(ident)
    doc = {"b": [1, 2], "a": {"nested": "中文"}, "id": ident, "long": "y" * 1995 + ident}
    page = text(json.dumps(doc, separators=(",", ":")).encode(), json_pretty=True, mask="pii")
    assert page.lines[0] == "{" and '  "b": [' in page.lines
    assert '    "nested": "中文"' in page.lines
    assert all(len(line) <= 2000 for line in page.lines)
    assert ident not in "".join(page.lines) and ident not in "\n".join(page.lines)
    assert text(b"{not json", json_pretty=True).lines == ("{not json",)
    paged = text(json.dumps(list(range(300))).encode(), json_pretty=True, per_page=100, page=2)
    assert paged.lines[0] == "  99," and paged.has_next


def test_deeply_nested_json_falls_back_to_text():
    data = b"[" * 100_000 + b"]" * 100_000
    page = text(data, json_pretty=True)
    assert page.lines and set(page.lines[0]) == {"["}


# --- images -----------------------------------------------------------------------------------------------


def noise_image(size=(320, 240), mode="RGB") -> Image.Image:
    image = Image.effect_noise(size, 60).convert(mode)
    return image


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_png_is_re_encoded_without_text_chunks_or_exif():
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "secret-author")
    info.add_itxt("Comment", "secret-comment", zip=True)
    exif = Image.Exif()
    exif[0x010F] = "SecretCamera"  # Make
    source = encoded(noise_image(), "PNG", pnginfo=info, exif=exif)
    out = render_image(io.BytesIO(source), watermark=MARK)
    assert out.media_type == "image/png" and out.data != source
    assert b"secret" not in out.data and b"SecretCamera" not in out.data
    image = decode(out.data)
    assert image.format == "PNG" and image.size == (320, 240) and (out.width, out.height) == (320, 240)
    assert not image.info.get("Author") and not image.getexif()


def test_jpeg_is_re_encoded_without_exif_and_upright():
    exif = Image.Exif()
    exif[0x010F] = "SecretCamera"
    exif[0x0112] = 6  # orientation: rotate 90° on display
    source = encoded(noise_image((300, 200)), "JPEG", exif=exif, quality=90)
    out = render_image(io.BytesIO(source), watermark=MARK)
    assert out.media_type == "image/jpeg" and b"SecretCamera" not in out.data
    image = decode(out.data)
    assert image.format == "JPEG" and image.size == (200, 300) and not image.getexif()


def test_big_images_are_shrunk_for_display():
    out = render_image(io.BytesIO(encoded(Image.new("RGB", (4000, 1000), "white"), "PNG")), watermark=None)
    assert (out.width, out.height) == (2048, 512)


def uncovered_squares(rendered: bytes, original: Image.Image, side: int) -> list[tuple[int, int]]:
    """Top-left corners of side×side squares (on a half-side grid) where no pixel changed."""
    out = decode(rendered).convert("RGB")
    diff = ImageChops.difference(out, original.convert("RGB"))
    step = max(1, side // 2)
    return [(x, y) for x in range(0, out.width - side + 1, step) for y in range(0, out.height - side + 1, step)
            if diff.crop((x, y, x + side, y + side)).getbbox() is None]


@pytest.mark.parametrize("size", [(800, 600), (200, 150), (1200, 90), (64, 64)])
@pytest.mark.parametrize("color", [(128, 128, 128), (0, 0, 0), (255, 255, 255)])
def test_the_watermark_reaches_every_part_of_the_image(size, color):
    original = Image.new("RGB", size, color)
    out = render_image(io.BytesIO(encoded(original, "PNG")), watermark=MARK)
    # No crop a sixth of the shorter side (or 24 px for tiny images) wide escapes the watermark.
    side = max(24, min(size) // 6)
    assert uncovered_squares(out.data, original, side) == []
    plain = render_image(io.BytesIO(encoded(original, "PNG")), watermark=None)
    assert decode(plain.data).convert("RGB").tobytes() == original.tobytes()


def test_the_watermark_changes_a_jpeg_too():
    original = Image.new("RGB", (400, 300), (90, 140, 200))
    source = io.BytesIO(encoded(original, "JPEG", quality=95))
    marked = decode(render_image(source, watermark=MARK).data).convert("RGB")
    plain = decode(render_image(source, watermark=None).data).convert("RGB")
    diff = ImageChops.difference(marked, plain)
    for x in range(0, 400 - 60, 30):
        for y in range(0, 300 - 60, 30):
            assert max(diff.crop((x, y, x + 60, y + 60)).convert("L").getextrema()) > 20, (x, y)


def test_transparent_png_stays_png_and_palette_images_render():
    rgba = Image.new("RGBA", (120, 80), (10, 200, 10, 100))
    assert render_image(io.BytesIO(encoded(rgba, "PNG")), watermark=MARK).media_type == "image/png"
    palette = noise_image((100, 100)).convert("P")
    assert decode(render_image(io.BytesIO(encoded(palette, "PNG")), watermark=MARK).data).size == (100, 100)
    sixteen = Image.new("I;16", (50, 40))
    assert render_image(io.BytesIO(encoded(sixteen, "PNG")), watermark=MARK).width == 50


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width`×`height` and holds one tiny compressed row (never decoded that far)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (100_000, 1000), (65_000, 65_000)])
def test_decompression_bombs_are_refused_before_decoding(width, height):
    with pytest.raises(RenderError) as caught:
        render_image(io.BytesIO(png_header_only(width, height)), watermark=MARK)
    assert "too large" in caught.value.safe_message


def test_a_small_limit_refuses_a_real_image():
    data = encoded(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(RenderError, match="too large"):
        render_image(io.BytesIO(data), watermark=None, limits=Limits(max_image_pixels=10_000))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_truncated_image_gives_a_clear_error(fmt):
    data = encoded(noise_image((200, 200)), fmt)
    for cut in (len(data) // 2, 40, 8):
        with pytest.raises(RenderError) as caught:
            render_image(io.BytesIO(data[:cut]), watermark=MARK)
        assert "damaged" in caught.value.safe_message


@pytest.mark.parametrize("data", [
    b"", b"not an image at all", encoded(Image.new("RGB", (20, 20)), "GIF"), encoded(Image.new("RGB", (20, 20)),
                                                                                         "BMP"),
    b"<svg xmlns='http://www.w3.org/2000/svg'/>",
])
def test_other_formats_are_not_decoded(data):
    with pytest.raises(RenderError):
        render_image(io.BytesIO(data), watermark=MARK)


def test_the_callers_file_stays_open():
    raw = io.BytesIO(encoded(noise_image((50, 50)), "PNG"))
    render_image(raw, watermark=MARK)
    assert not raw.closed
    raw = io.BytesIO(b"a,b\n1,2\n")
    table_page(raw, tsv=False, page=1, per_page=5)
    text_page(raw, size=8, page=1, per_page=5)
    assert not raw.closed


def test_watermark_tile_png():
    tile = decode(render.watermark_png(MARK))
    assert tile.format == "PNG" and tile.mode == "RGBA" and tile.getbbox() is not None


# Narrow display lines force many cuts: no number or address may survive any of them.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .test_masking import assert_hidden, formatted, sensitive_numbers  # noqa: E402

_filler = st.text(st.sampled_from("ab 中.-@x1\u00a0"), max_size=120)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_filler, sensitive_numbers.flatmap(lambda n: st.tuples(st.just(n), formatted(n)))),
                min_size=1, max_size=6), st.integers(20, 80))
def test_no_number_survives_any_wrap_width(parts, width):
    line = "".join(f + shown for f, (_, shown) in parts) + "\n"
    page = text(line.encode(), per_page=10**6, mask="pii", limits=Limits(text_line_chars=width))
    joined = "".join(page.lines)
    assert len(joined) == len(line) - 1 and all(len(piece) <= width for piece in page.lines)
    for _, (number, _) in parts:
        assert_hidden(number, joined)


# --- JSON under a mask: keys mask their values, as headers mask columns ------------------------------------


def _json_page(data: bytes, mask: str = "pii", **options) -> list[str]:
    return list(render.text_page(io.BytesIO(data), size=len(data), page=1, per_page=200, mask=mask,
                                 **options).lines)


PERSON = {"name": "张三", "account": "6228480402564890018", "phone": "010-62345678", "city": "Bern",
          "nested": {"email": "bob@example.com", "count": 3}, "holder": {"full": "Li Na"}}


def test_json_values_under_sensitive_keys_are_masked_whole():
    shown = "\n".join(_json_page(json.dumps([PERSON], ensure_ascii=False).encode(), json_pretty=True))
    for secret in ("张三", "6228480402564890018", "010-62345678", "bob@example.com", "Li Na"):
        assert secret not in shown
    assert '"name": "张*"' in shown and '"city": "Bern"' in shown and '"count": 3' in shown
    unmasked = "\n".join(_json_page(json.dumps([PERSON], ensure_ascii=False).encode(), mask="none",
                                    json_pretty=True))
    assert "010-62345678" in unmasked and "张三" in unmasked


def test_ndjson_records_are_masked_by_key_and_other_lines_as_text():
    body = "\n".join([json.dumps(PERSON, ensure_ascii=False), "plain 13812345678", "{broken"]).encode()
    shown = _json_page(body, ndjson=True)
    assert "张三" not in shown[0] and "010-62345678" not in shown[0] and '"city": "Bern"' in shown[0]
    assert shown[1] == "plain 138****5678" and shown[2] == "{broken"


def test_a_long_ndjson_record_is_masked_by_key_then_wrapped():
    record = json.dumps({"name": "Zhang Wei", "note": "x" * 5000})
    shown = _json_page(record.encode(), ndjson=True)
    assert len(shown) > 1 and not any("Zhang" in line or "Wei" in line for line in shown)
    assert shown[0].startswith('{"name": "Z**** ***"')


def test_an_ndjson_record_too_long_to_parse_is_masked_whole():
    limits = render.Limits(max_json_pretty=1000)
    record = json.dumps({"note": "y" * 3000, "name": "Zhang Wei"})
    body = (record + "\n").encode()
    shown = list(render.text_page(io.BytesIO(body), size=len(body), page=1, per_page=200, mask="pii",
                                  ndjson=True, limits=limits).lines)
    assert shown and not any("Zhang" in line or "Wei" in line or "name" in line for line in shown)


def test_json_that_cannot_be_parsed_or_is_too_big_is_refused_under_a_mask():
    with pytest.raises(RenderError, match="not valid JSON"):
        _json_page(b'{"name": "Zhang Wei",', json_pretty=True)
    assert _json_page(b'{"name": "Zhang Wei",', mask="none", json_pretty=True) == ['{"name": "Zhang Wei",']
    big = json.dumps({"rows": ["a" * 100] * 20_000}).encode()
    with pytest.raises(RenderError, match="cannot be shown masked"):
        _json_page(big, json_pretty=True)
    assert _json_page(big, mask="none", json_pretty=True)


def test_tsv_has_no_quoting_so_a_quote_never_swallows_following_rows():
    body = b'id\tnote\n1\t"starts with a quote\n2\tplain\n3\tends" here\n'
    page = render.table_page(io.BytesIO(body), tsv=True, page=1, per_page=10)
    assert page.rows == (("1", '"starts with a quote'), ("2", "plain"), ("3", 'ends" here'))
