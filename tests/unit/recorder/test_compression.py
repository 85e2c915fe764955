"""Coding choice: repetitive output compressed, the rest stored (judged once per job); all plain zlib."""

from __future__ import annotations

import base64
import json
import os
import zlib

import pytest
from zlib_ng import zlib_ng

from bastion.recorder import writer


def _block_types(stream: bytes) -> set[int]:
    """The BTYPE of every deflate block in a zlib stream that holds stored blocks only, or {1 or 2}."""
    types, at = set(), 2
    while True:
        head = stream[at]
        types.add((head >> 1) & 3)
        if types != {0}:
            return types  # a Huffman block: not walked further
        (length,) = __import__("struct").unpack_from("<H", stream, at + 1)
        at += 5 + length
        if head & 1:
            assert len(stream) == at + 4  # the Adler-32 follows the last block
            return types


def _coding(data: bytes) -> str:
    """Which coding compress_chunk chose, read back from the stream itself."""
    out = writer.compress_chunk(data, writer.worth_compressing(data))
    assert zlib.decompress(out) == data  # the standard library reads what zlib-ng writes
    return "stored" if _block_types(out) == {0} else "level1"


def test_repetitive_output_gets_full_level_1():
    log = b"2026-11-28 12:00:01 INFO request id=12345 path=/api/v1/items status=200\n" * 900
    assert _coding(log) == "level1"
    assert len(writer.compress_chunk(log, True)) < len(log) // 20


def _source_chunks() -> list[bytes]:
    """64 KiB chunks of ordinary text: this Python's standard library sources, as a `cat` would show them."""
    import sysconfig
    from pathlib import Path

    text = b"".join(path.read_bytes() for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60])
    return [text[start:start + 65536] for start in range(0, len(text) - 65536, 65536)]


def test_ordinary_source_text_is_compressed_to_under_half():
    chunks = _source_chunks()
    assert len(chunks) >= 20
    codings = [_coding(chunk) for chunk in chunks]
    assert codings.count("level1") >= 0.9 * len(chunks), codings  # judged on a sample of each
    written = sum(len(writer.compress_chunk(chunk, writer.worth_compressing(chunk))) for chunk in chunks)
    assert written < 0.5 * sum(map(len, chunks))


def test_a_chunk_that_would_inflate_past_the_limit_is_not_read():
    from bastion.recorder import container, reader

    bomb = zlib_ng.compress(b"\n" * (container.MAX_DECOMPRESSED + 1), 9)
    assert len(bomb) < container.MAX_DECOMPRESSED // 100
    assert reader._chunk_lines(bomb) is None
    fits = zlib_ng.compress(b"[0.5, \"o\", \"x\"]\n" * 10, 1)
    assert reader._chunk_lines(fits) == ['[0.5, "o", "x"]'] * 10


def test_text_that_barely_compresses_is_stored_not_worked_on():
    text = json.dumps([0.5, "o", base64.b64encode(os.urandom(48 * 1024)).decode()]).encode()
    assert _coding(text) == "stored"


def test_random_bytes_are_stored_not_worked_on():
    data = os.urandom(64 * 1024)
    assert _coding(data) == "stored"


@pytest.mark.parametrize("data", [b"", b"x", os.urandom(10), b"\0" * 100_000])
def test_edge_sizes_round_trip(data):
    assert zlib.decompress(writer.compress_chunk(data, writer.worth_compressing(data))) == data


@pytest.mark.parametrize("size", [0, 1, 65534, 65535, 65536, 2 * 65535, 2 * 65535 + 1, 200_000])
@pytest.mark.parametrize("compress", [False, True], ids=["stored", "level1"])
def test_chunks_are_plain_zlib_the_standard_library_reads_across_block_boundaries(size, compress):
    data = base64.b64encode(os.urandom(size))[:size] if compress else os.urandom(size)
    out = writer.compress_chunk(data, compress)
    inflater = zlib.decompressobj()  # zlib checks the header, every block and the Adler-32
    assert inflater.decompress(out) == data and inflater.eof and not inflater.unused_data
    if not compress:
        assert _block_types(out) == {0}


def _chunk_codings(path, env) -> list[str]:
    """The coding of each chunk of a recording, read from the decrypted streams."""
    from bastion.recorder import container
    from bastion.recorder.reader import _data_key, _decrypt

    with open(path, "rb") as stream:
        preamble = container.read_preamble(stream)
        aead = _data_key(preamble, env.vault)
        return ["stored" if _block_types(_decrypt(aead, preamble.session_id, container.parse_chunk(r.payload)))
                == {0} else "level1"
                for r in container.read_records(stream, stream.tell()) if r.type == container.CHUNK]


def test_a_job_is_judged_once_on_its_first_chunk(env, tmp_path):
    from .containerfile import open_in_sealer

    path = tmp_path / "s.bcast"
    sealer = open_in_sealer(env, path, 4096)
    log = b"2026-11-28 12:00:01 INFO request id=12345 path=/api/v1/items status=200\r\n" * 60
    noise = base64.b64encode(os.urandom(4500))
    sealer.handle("append", "r", ([(0.0, "o", log), (0.1, "o", noise), (0.2, "o", noise)], 1.0))
    sealer.handle("append", "r", ([(0.3, "o", noise), (0.4, "o", log), (0.5, "o", log)], 1.0))
    sealer.handle("finish", "r", ([], 1.0, "exited", "now"))
    # A chunk per event line (each is past the 4 KiB target): the first job's three follow its
    # repetitive first chunk, the second job's its barely compressible one.
    assert _chunk_codings(path, env) == ["level1"] * 3 + ["stored"] * 3


def test_a_small_chunk_is_compressed_without_a_sample(monkeypatch):
    typed = b'[1.25, "o", "ls -la\\r\\n"]\n[1.5, "i", "q"]\n' * 20
    assert len(typed) <= writer.SMALL_CHUNK

    def no_sample(*_):
        raise AssertionError("a small chunk was sampled")

    monkeypatch.setattr(writer.zlib, "compress", no_sample)
    assert writer.worth_compressing(typed) is True
    assert zlib_ng.decompress(writer.compress_chunk(typed, True)) == typed
    with pytest.raises(AssertionError):  # a larger one still is
        writer.worth_compressing(typed * 4)


def test_a_stored_chunk_names_a_small_window_so_storing_skips_the_compressors_set_up():
    """Storing needs no history; the default window's set-up cost a stored chunk more than the storing did."""
    data = os.urandom(64 * 1024)
    out = writer.compress_chunk(data, False)
    assert out[0] & 0x0F == 8 and out[0] >> 4 <= 1  # deflate, with a window of at most 512 bytes
    assert _block_types(out) == {0}
    inflater = zlib.decompressobj()  # an inflater set up for the default window reads it
    assert inflater.decompress(out) == data and inflater.eof
    compressed = writer.compress_chunk(data, True)
    assert compressed[0] >> 4 == 7  # compressing keeps the full 32 KiB window
