"""Event lines: the ASCII fast path writes exactly what the generic JSON path means, for any bytes."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from bastion.recorder import writer


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300).map(lambda b: bytes(x & 0x7F for x in b)),
       time=st.floats(min_value=0, max_value=1e7, allow_nan=False), code=st.sampled_from("oi"))
def test_ascii_lines_mean_the_same_as_generic_lines(data, time, code):
    fast = writer._ascii_line(time, code, data)
    assert fast.endswith(b"\n") and fast.count(b"\n") == 1  # one event, one line
    assert json.loads(fast) == json.loads(writer._line(time, code, data.decode("ascii")))


def test_writer_output_mixes_paths_without_losing_a_split_character(tmp_path):
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = os.urandom(32)
    fd = os.open(tmp_path / "r", os.O_CREAT | os.O_RDWR, 0o600)
    chunk = writer.ChunkWriter(fd, "s", key, b"", b'{"version": 2}\n', 1024, Ed25519PrivateKey.generate())
    euro = "€".encode()
    # ASCII, then a character split across two reads, then ASCII again with quotes and escapes
    events = [(0.1, "o", b'plain "text"\n'), (0.2, "o", b"price " + euro[:1]), (0.3, "o", euro[1:] + b"!"),
              (0.4, "o", b"\x1b[31mred\x1b[0m\\")]
    lines = list(chunk._lines(events))
    os.close(fd)
    texts = [json.loads(line)[2] for line in lines]
    assert "".join(texts) == 'plain "text"\nprice €!\x1b[31mred\x1b[0m\\'
