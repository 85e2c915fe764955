"""Per-chunk coding choice: repetitive output compressed, the rest stored; both round-trip as zlib."""

from __future__ import annotations

import base64
import json
import os
import zlib

import pytest

from bastion.recorder import writer


def _coding(data: bytes) -> str:
    """Which coding compress_chunk chose, read back from the stream itself."""
    out = writer.compress_chunk(data)
    assert zlib.decompress(out) == data
    if out == zlib.compress(data, 0):
        return "stored"
    assert out == zlib.compress(data, writer.COMPRESS_LEVEL)
    return "level1"


def test_repetitive_output_gets_full_level_1():
    log = b"2026-11-28 12:00:01 INFO request id=12345 path=/api/v1/items status=200\n" * 900
    assert _coding(log) == "level1"
    assert len(writer.compress_chunk(log)) < len(log) // 20


def test_text_that_barely_compresses_is_stored_not_worked_on():
    text = json.dumps([0.5, "o", base64.b64encode(os.urandom(48 * 1024)).decode()]).encode()
    assert _coding(text) == "stored"


def test_random_bytes_are_stored_not_worked_on():
    data = os.urandom(64 * 1024)
    assert _coding(data) == "stored"


@pytest.mark.parametrize("data", [b"", b"x", os.urandom(10), b"\0" * 100_000])
def test_edge_sizes_round_trip(data):
    assert zlib.decompress(writer.compress_chunk(data)) == data
