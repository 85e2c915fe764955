"""Events in, verified container on disk, plain .cast out that the real asciinema CLI plays."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import zlib
from pathlib import Path

from bastion.recorder import container
from bastion.recorder.export import export_cast
from bastion.recorder.reader import iter_lines, verify

from .containerfile import output_text, read_cast, split_file

ASCIINEMA = Path(sys.executable).with_name("asciinema")


def asciinema_cat(cast: Path) -> str:
    # A new session has no controlling terminal, so asciinema does not try to put one in raw mode.
    result = subprocess.run([str(ASCIINEMA), "cat", str(cast)], capture_output=True, timeout=60,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode("utf-8")


async def test_round_trip_exports_a_cast_that_asciinema_plays(env, tmp_path):
    rec = await env.open(width=100, height=30, term="xterm-256color", title="alice \u2192 root@web01")
    rec.output(b"$ ")
    rec.input(b"cat notes.txt\n")  # no terminal: input is noted, never recorded
    rec.output("h\u00e9llo w\u00f6rld \u2713\r\n".encode())
    split = "\u2713 done\r\n".encode()
    rec.output(split[:1])  # a multibyte character cut between two reads
    await rec.flush()  # ... and between two chunks
    rec.output(split[1:])
    rec.output(b"\xff\xfe bad bytes\r\n")
    rec.resize(120, 40)
    rec.marker("sftp upload /tmp/x 1234 bytes")
    await rec.close("client closed")

    report = verify(rec.path, env.public_key)
    assert report.ok and report.status == "sealed", report
    assert report.chunks == 2 and report.first_bad_chunk is None
    assert report.end_reason == "client closed"

    out = tmp_path / "out.cast"
    assert export_cast(rec.path, out, env.vault, env.public_key).ok
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the export is clear text
    header, events = read_cast(out)
    assert header["version"] == 2 and header["width"] == 100 and header["height"] == 30
    assert header["env"] == {"TERM": "xterm-256color"} and header["title"] == "alice \u2192 root@web01"
    assert isinstance(header["timestamp"], int)
    assert "bastion_verification" not in header
    assert all(len(e) == 3 and e[1] in "oirm" and isinstance(e[2], str) for e in events)
    times = [e[0] for e in events]
    assert times == sorted(times) and all(round(t, 6) == t for t in times)
    assert output_text(events) == "$ h\u00e9llo w\u00f6rld \u2713\r\n\u2713 done\r\n\ufffd\ufffd bad bytes\r\n"
    assert [e[2] for e in events if e[1] == "i"] == ["<hidden>"]
    assert [e[2] for e in events if e[1] == "r"] == ["120x40"]
    assert [e[2] for e in events if e[1] == "m"] == ["sftp upload /tmp/x 1234 bytes"]
    assert "notes.txt" not in out.read_text(encoding="utf-8")

    played = asciinema_cat(out)
    assert "h\u00e9llo w\u00f6rld \u2713" in played and "\u2713 done" in played

    lines = list(iter_lines(rec.path, env.vault, env.public_key))
    assert lines == out.read_text(encoding="utf-8").splitlines()


async def test_file_layout_modes_and_index_row(env):
    rec = await env.open()
    rec.output(b"hello\r\n")
    await rec.close("exit")
    created = (await env.row(rec.recording_id)).created_at
    expected = (env.config.recordings_dir / f"{created:%Y}" / f"{created:%m}" / f"{created:%d}"
                / f"{rec.session_id}.bcast")
    assert rec.path == expected and expected.exists()
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    for directory in (expected.parent, expected.parent.parent, expected.parent.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    report = verify(rec.path, env.public_key)
    row = await env.row(rec.recording_id)
    assert row.status == "sealed" and row.session_id == rec.session_id and row.path == str(rec.path)
    assert row.chunks == report.chunks == 1
    assert row.size == rec.path.stat().st_size == report.size
    assert row.last_hash == report.last_hash and row.closed_at is not None


async def test_a_session_without_events_still_has_a_header(env, tmp_path):
    rec = await env.open()
    await rec.close("no output")
    report = verify(rec.path, env.public_key)
    assert report.ok and report.chunks == 1
    lines = list(iter_lines(rec.path, env.vault, env.public_key))
    assert len(lines) == 1 and json.loads(lines[0])["version"] == 2


async def test_no_session_content_is_on_disk_in_clear(env):
    secret = "ZEBRA-7731-DISTINCTIVE"
    rec = await env.open(title=f"title {secret}")
    for _ in range(20):
        rec.output(f"{secret} on the screen\r\n".encode())
    rec.marker(f"sftp upload /srv/{secret} 10 bytes")
    await rec.close("done")
    data = rec.path.read_bytes()
    for needle in (secret.encode(), secret.encode("utf-16-le"), base64.b64encode(secret.encode())[:16]):
        assert needle not in data

    preamble, records = split_file(rec.path)
    meta = json.loads(preamble[len(container.MAGIC) + 4:])
    assert set(meta) == {"format", "session_id", "created", "node", "cipher", "wrapped_key"}

    # Not even "merely compressed": no offset of any record, nor of the file, inflates to content.
    blobs = [payload for _, payload in records] + [data]
    for blob in blobs:
        for start in range(len(blob)):
            inflater = zlib.decompressobj()
            try:
                plain = inflater.decompress(blob[start:], 1 << 20)
            except zlib.error:
                continue
            assert secret.encode() not in plain

    # and the content is there for whoever holds the vault
    assert secret in "\n".join(iter_lines(rec.path, env.vault, env.public_key))


async def test_huge_single_read_is_split_into_bounded_chunks(env):
    store = env.store(recording__chunk_bytes=64 * 1024)
    rec = await env.open(store)
    blob = (b"0123456789abcdef" * 4096) * 40  # 2.5 MiB in one call
    rec.output(blob)
    await rec.close("done")
    report = verify(rec.path, env.public_key)
    assert report.ok and report.chunks >= 40
    _, records = split_file(rec.path)
    assert max(len(payload) for _, payload in records) < container.MAX_RECORD
    text = "".join(json.loads(line)[2] for line in list(iter_lines(rec.path, env.vault, env.public_key))[1:])
    assert text.encode() == blob


async def test_export_to_an_unwritable_place_is_a_clear_error(env, tmp_path):
    import pytest
    from bastion.errors import RecordingError

    rec = await env.open()
    await rec.close("done")
    with pytest.raises(RecordingError, match="export cannot be written"):
        export_cast(rec.path, tmp_path / "missing-dir" / "out.cast", env.vault, env.public_key)
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(RecordingError, match="export cannot be written"):
        export_cast(rec.path, tmp_path / "a-dir", env.vault, env.public_key)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_a_chunk_record_in_pieces_is_the_framed_record_and_its_hash():
    nonce, prev_hash, ciphertext = os.urandom(container.NONCE_SIZE), os.urandom(32), os.urandom(5000)
    pieces, digest = container.chunk_record(7, prev_hash, nonce, ciphertext)
    payload = container.encode_chunk_payload(7, prev_hash, nonce, ciphertext)
    assert b"".join(pieces) == container.frame(container.CHUNK, payload)
    assert digest == container.record_hash(container.CHUNK, payload)
    assert pieces[-1] is ciphertext  # written as it is, not copied into the record


def test_short_writes_resume_where_they_stopped(env, tmp_path, monkeypatch):
    """Storage that takes a few bytes per call, across records and more pieces than one call may carry."""
    from bastion.recorder import writer

    from .containerfile import open_in_sealer

    real_writev, calls = os.writev, []

    def a_little_at_a_time(fd, buffers):
        calls.append(len(buffers))
        return real_writev(fd, [bytes(buffers[0])[:777]])

    monkeypatch.setattr(writer, "IOV_MAX", 3)
    monkeypatch.setattr(writer.os, "writev", a_little_at_a_time)
    path = tmp_path / "s.bcast"
    sealer = open_in_sealer(env, path, 4096)
    sent = [base64.b64encode(os.urandom(3000 + 97 * n)) + b"\r\n" for n in range(12)]
    sealer.handle("append", "r", ([(0.1 * n, "o", data) for n, data in enumerate(sent[:6])], 1.0))
    sealer.handle("append", "r", ([(1.0 + 0.1 * n, "o", data) for n, data in enumerate(sent[6:])], 2.0))
    sealer.handle("finish", "r", ([], 2.5, "exited", "now"))
    assert len(calls) > len(sent) and max(calls) == 3  # many short writes, never more than IOV_MAX pieces

    report = verify(path, env.public_key)
    assert report.ok and report.status == "sealed" and report.chunks >= 10, report
    out = tmp_path / "out.cast"
    assert export_cast(path, out, env.vault, env.public_key).ok
    assert output_text(read_cast(out)[1]) == b"".join(sent).decode()
