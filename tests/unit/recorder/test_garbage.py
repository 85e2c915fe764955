"""Files that are not recordings, or are mangled ones, give a clear report or error and bounded memory."""

from __future__ import annotations

import os
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.errors import RecordingError
from bastion.recorder import container
from bastion.recorder.export import export_cast
from bastion.recorder.reader import iter_lines, verify

from .containerfile import read_cast

PREAMBLE = container.encode_preamble("s-1", "2026-11-28T12:00:00+00:00", "node-test", b"k" * 60)

GARBAGE = [
    ("random bytes", os.urandom(4096), "bad magic"),
    ("empty file", b"", "empty file"),
    ("wrong magic", b"NOTACAST\x01" + b"\0" * 64, "bad magic"),
    ("a few bytes of the magic", b"BAST", "cut short"),
    ("newer container version", b"BASTCAST\x02" + b"\0" * 64, "version 2"),
    ("huge preamble length", b"BASTCAST\x01\xff\xff\xff\xff" + b"{}", "exceeds the limit"),
    ("preamble not JSON", b"BASTCAST\x01\x00\x00\x00\x04\xff\xfe{[", "not valid JSON"),
    ("preamble without a session", container.MAGIC + struct.pack(">I", 2) + b"{}", "format"),
    ("hostile session id", container.encode_preamble("../../x", "t", "n", b"k"), "session id"),
    ("huge record length", PREAMBLE + b"\xff\xff\xff\xff" + b"C" * 100, "length field is corrupt"),
    ("record length past the end", PREAMBLE + struct.pack(">I", container.MAX_RECORD) + b"C" * 100, "ends inside"),
    ("zero record length", PREAMBLE + b"\0\0\0\0", "length field is corrupt"),
    ("unknown record type", PREAMBLE + container.frame(b"Z", b"\0" * 90), "unknown record type"),
    ("chunk too short", PREAMBLE + container.frame(b"C", b"\0" * 10), "shorter than any valid chunk"),
    ("manifest too short", PREAMBLE + container.frame(b"M", b"\0" * 10), "manifest is too short"),
    ("random bytes after a preamble", PREAMBLE + os.urandom(2048), ""),
]


@pytest.mark.parametrize("name, data, words", GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_garbage_gets_a_clear_verdict(env, tmp_path, name, data, words):
    path = tmp_path / "garbage.bcast"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        report = verify(path, env.public_key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, "verification must not allocate what a length field claims"
    assert not report.ok and report.status in ("corrupt", "truncated"), report
    assert words in report.reason, report
    with pytest.raises(RecordingError):
        list(iter_lines(path, env.vault, env.public_key))
    with pytest.raises(RecordingError):
        export_cast(path, tmp_path / "out.cast", env.vault, env.public_key)
    if report.session_id is None:  # not even a preamble: nothing to export, forced or not
        with pytest.raises(RecordingError):
            export_cast(path, tmp_path / "out.cast", env.vault, env.public_key, force=True)
    else:
        # A preamble but no verifiable chunk: an empty cast that says so, or (when nothing tells
        # a forged key from a foreign vault) a clear error.
        try:
            export_cast(path, tmp_path / "out.cast", env.vault, env.public_key, force=True)
        except RecordingError as exc:
            assert "vault" in exc.safe_message
        else:
            header, events = read_cast(tmp_path / "out.cast")
            assert header["bastion_verification"].startswith("FAILED: ") and [e[1] for e in events] == ["m"]


async def test_missing_file_and_directory_are_clear_errors(env, tmp_path):
    with pytest.raises(RecordingError, match="not found"):
        verify(tmp_path / "nope.bcast", env.public_key)
    with pytest.raises(RecordingError, match="directory"):
        verify(tmp_path, env.public_key)


@pytest.fixture
async def small_recording(env):
    rec = await env.open(env.store(recording__chunk_bytes=128))
    for index in range(3):
        rec.output(f"line {index} ".encode() + b"q" * 150)
    await rec.close("done")
    return rec.path.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mangled_recordings_never_crash_the_reader(env, small_recording, tmp_path_factory, data):
    blob = bytearray(small_recording)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        position = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if action == "flip" and blob:
            blob[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del blob[position:]
        elif action == "insert":
            blob[position:position] = data.draw(st.binary(min_size=1, max_size=16))
        elif blob:
            del blob[position:position + data.draw(st.integers(1, 16))]
    path = tmp_path_factory.mktemp("fuzz") / "mangled.bcast"
    path.write_bytes(bytes(blob))
    report = verify(path, env.public_key)
    assert report.status in ("sealed", "unsealed", "truncated", "corrupt", "failed")
    if bytes(blob) != small_recording:
        assert not report.ok or report.chunks == 3  # only a no-op change may still verify
    try:
        lines = list(iter_lines(path, env.vault, env.public_key, force=True))
    except RecordingError:
        return
    assert len(lines) == 0 or lines[0].startswith("{")
