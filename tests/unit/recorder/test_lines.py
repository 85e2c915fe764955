"""Event lines: the bytes fast path writes exactly what the generic JSON path means, for any ASCII and
any whole UTF-8."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from bastion.recorder import writer


def _chunk_writer(fd: int) -> writer.ChunkWriter:
    return writer.ChunkWriter(fd, "s", os.urandom(32), b"", b'{"version": 2}\n', 1024, Ed25519PrivateKey.generate())


def _no_json_encoder(*args):
    raise AssertionError("whole UTF-8 went through json.dumps")


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300).map(lambda b: bytes(x & 0x7F for x in b)),
       time=st.floats(min_value=0, max_value=1e7, allow_nan=False), code=st.sampled_from("oi"))
def test_ascii_lines_mean_the_same_as_generic_lines(data, time, code):
    fast = writer._text_line(time, code, data)
    assert fast.endswith(b"\n") and fast.count(b"\n") == 1  # one event, one line
    assert json.loads(fast) == json.loads(writer._line(time, code, data.decode("ascii")))


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=200), time=st.floats(min_value=0, max_value=1e7, allow_nan=False),
       code=st.sampled_from("oi"))
def test_utf8_lines_mean_the_same_as_generic_lines(text, time, code):
    data = text.encode("utf-8", "surrogatepass")
    if writer._whole_characters(data) != (data, b""):  # a lone surrogate is not UTF-8: the generic path takes it
        return
    fast = writer._text_line(time, code, data)
    assert fast.endswith(b"\n") and fast.count(b"\n") == 1
    assert json.loads(fast) == json.loads(writer._line(time, code, text))


@pytest.mark.parametrize("data, split", [
    (b"plain", (b"plain", b"")),
    ("h\u00e9llo \u2502 \u2713 \u4e2d".encode(), ("h\u00e9llo \u2502 \u2713 \u4e2d".encode(), b"")),
    (b"ab" + "\u20ac".encode()[:2], (b"ab", "\u20ac".encode()[:2])),  # a read split the euro sign
    (b"ab" + "\U0001f600".encode()[:3], (b"ab", "\U0001f600".encode()[:3])),
    ("\u20ac".encode()[1:], None),  # continuation bytes with no start
    (b"\xff\xfe", None), (b"ab\xf8", None), (b"ab\xc0", None),
    (b"\xed\xa0\x80", None),  # an encoded surrogate
    # Its start cannot be told from a character's before the next byte: held back, as the decoder holds it.
    (b"ab\xed\xa0", (b"ab", b"\xed\xa0")),
])
def test_whole_characters_are_told_from_split_or_invalid_bytes(data, split):
    assert writer._whole_characters(data) == split


def test_utf8_output_takes_the_bytes_path_not_the_json_encoder(monkeypatch, tmp_path):
    fd = os.open(tmp_path / "r", os.O_CREAT | os.O_RDWR, 0o600)
    chunk = _chunk_writer(fd)
    monkeypatch.setattr(writer, "_line", _no_json_encoder)
    lines = list(chunk._lines([(0.1, "o", "\u250c\u2500 Caf\u00e9 \"M\u00fcller\" \u2500\u2510\r\n".encode())]))
    os.close(fd)
    assert [json.loads(line)[2] for line in lines] == ['\u250c\u2500 Caf\u00e9 "M\u00fcller" \u2500\u2510\r\n']


def test_writer_output_mixes_paths_without_losing_a_split_character(tmp_path):
    fd = os.open(tmp_path / "r", os.O_CREAT | os.O_RDWR, 0o600)
    chunk = _chunk_writer(fd)
    euro = "€".encode()
    # ASCII, then a character split across two reads, then ASCII again with quotes and escapes
    events = [(0.1, "o", b'plain "text"\n'), (0.2, "o", b"price " + euro[:1]), (0.3, "o", euro[1:] + b"!"),
              (0.4, "o", b"\x1b[31mred\x1b[0m\\")]
    lines = list(chunk._lines(events))
    os.close(fd)
    texts = [json.loads(line)[2] for line in lines]
    assert "".join(texts) == 'plain "text"\nprice €!\x1b[31mred\x1b[0m\\'


@settings(max_examples=300, deadline=None)
@given(text=st.text(min_size=1, max_size=300), cuts=st.lists(st.integers(0, 1200), max_size=8))
def test_utf8_split_anywhere_across_reads_is_recorded_whole_without_the_json_encoder(text, cuts):
    data = text.encode("utf-8", "surrogatepass")
    if writer._whole_characters(data) != (data, b""):
        return
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    reads = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    fd = os.open("/dev/null", os.O_WRONLY)
    chunk = _chunk_writer(fd)
    with mock.patch.object(writer, "_line", _no_json_encoder):
        lines = list(chunk._lines([(0.1 * n, "o", read) for n, read in enumerate(reads)]))
    os.close(fd)
    assert "".join(json.loads(line)[2] for line in lines) == text
    assert chunk._decoders["o"].getstate()[0] == b""  # nothing left waiting once the text is whole


def test_invalid_bytes_after_a_held_start_still_become_replacement_characters(tmp_path):
    fd = os.open(tmp_path / "r", os.O_CREAT | os.O_RDWR, 0o600)
    chunk = _chunk_writer(fd)
    lines = list(chunk._lines([(0.1, "o", b"ab\xed\xa0"), (0.2, "o", b"\x80z \xff!")]))
    os.close(fd)
    assert "".join(json.loads(line)[2] for line in lines) == "ab\ufffd\ufffd\ufffdz \ufffd!"
