"""Storage failures fail closed: a clear reason, once, the row marked failed, the file still verifiable."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from bastion.errors import RecordingError
from bastion.recorder.reader import iter_lines, verify

from .conftest import wait_until
from .containerfile import output_text


def mount_tmpfs(directory: Path, options: str) -> None:
    directory.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")


@pytest.fixture
def small_disk(tmp_path):
    directory = tmp_path / "small"
    mount_tmpfs(directory, "size=64k,mode=0700")
    yield directory
    subprocess.run(["umount", str(directory)], check=True)


def noise(size: int) -> bytes:
    """Output that barely compresses, so it fills the disk at about its own size."""
    return base64.b64encode(os.urandom(size * 3 // 4))


@pytest.mark.parametrize("sealed", [False, True], ids=["threads", "sealer-process"])
async def test_disk_full_fails_closed_and_keeps_the_whole_chunks(env, small_disk, sealed):
    store = env.store(recording__dir=str(small_disk), recording__chunk_bytes=4096, sealed=sealed)
    rec = await env.open(store)
    written = []
    for _ in range(200):
        block = noise(4096)
        rec.output(block)
        written.append(block)
        await rec.flush()
        if rec.failed:
            break
    assert rec.failed == "recording storage full"
    await wait_until(lambda: env.failures)
    rec.output(b"after the failure")  # ignored, not raised
    await rec.close("session ended")
    assert env.failures == ["recording storage full"]  # reported once
    row = await env.row(rec.recording_id)
    assert row.status == "failed"

    report = verify(rec.path, env.public_key, vault=env.vault)
    assert report.chunks >= 2 and report.chunks == row.chunks, report
    assert report.status == "failed" and not report.ok  # cut back to whole chunks and sealed as failed
    assert "recording storage full" in report.end_reason
    text = output_text([__import__("json").loads(line)
                        for line in list(iter_lines(rec.path, env.vault, env.public_key, force=True))[1:]])
    assert text.encode() == b"".join(written[:report.chunks])


async def test_disk_full_with_jobs_queued_in_the_sealer_keeps_a_prefix_without_gaps(env, small_disk, monkeypatch,
                                                                                       caplog):
    import gc
    import signal

    from bastion.recorder import sink

    monkeypatch.setattr(sink, "JOB_BYTES", 8192)
    store = env.store(recording__dir=str(small_disk), recording__chunk_bytes=4096, sealed=True)
    rec = await env.open(store)
    try:
        pid = store._sealer._process.pid
        written = [noise(4096) for _ in range(40)]  # 160 KiB for a 64 KiB disk
        os.kill(pid, signal.SIGSTOP)  # the jobs pile up in flight, as under bulk output
        try:
            for block in written:
                rec.output(block)
            assert len(rec._jobs) == 2
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_until(lambda: rec.failed is not None)
        assert rec.failed == "recording storage full"
    finally:
        await rec.close("session ended")  # also on failure: the sealer lets go of the disk before umount
    assert env.failures == ["recording storage full"]  # once, however many jobs were queued
    row = await env.row(rec.recording_id)
    report = verify(rec.path, env.public_key, vault=env.vault)
    assert row.status == "failed" and report.status == "failed" and report.chunks == row.chunks >= 2
    text = output_text([__import__("json").loads(line)
                        for line in list(iter_lines(rec.path, env.vault, env.public_key, force=True))[1:]])
    assert len(text) >= 2 * 4096 and b"".join(written).startswith(text.encode())  # a prefix: nothing skipped
    gc.collect()  # the jobs that failed behind the first: their errors were expected, and retrieved
    assert "never retrieved" not in caplog.text


async def test_read_only_storage_refuses_the_session(env, tmp_path):
    # The gateway creates the file, so this is refused before any sealer is asked.
    directory = tmp_path / "ro"
    mount_tmpfs(directory, "size=64k,ro")
    try:
        store = env.store(recording__dir=str(directory))
        with pytest.raises(RecordingError) as refused:
            await env.open(store)
        assert refused.value.safe_message == "recording could not be started: recording storage is read-only"
        assert str(directory) not in refused.value.safe_message
    finally:
        subprocess.run(["umount", str(directory)], check=True)


async def test_write_error_on_the_descriptor_fails_closed(env):
    # Without mount rights: swap the recording's descriptor for /dev/full, whose writes fail with ENOSPC.
    store = env.store(recording__chunk_bytes=256)
    rec = await env.open(store)
    rec.output(b"a" * 300)
    await rec.flush()
    assert rec.state.chunks == 1
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, rec._writer.chunk._fd)
    finally:
        os.close(full)
    rec.output(b"b" * 300)
    await rec.flush()
    assert rec.failed == "recording storage full"
    await rec.close("session ended")
    assert env.failures == ["recording storage full"]
    assert (await env.row(rec.recording_id)).status == "failed"
    report = verify(rec.path, env.public_key, vault=env.vault)
    assert report.status == "unsealed" and report.chunks == 1  # the repair could not write: still verifiable


async def test_open_fails_closed_with_a_safe_message_and_leaves_nothing(env, tmp_path):
    store = env.store()
    with pytest.raises(RecordingError, match="invalid session id"):
        await store.open("../../etc/passwd", width=80, height=24, term="x", title="t", echo_tracking=False,
                         on_failure=print)
    # a session row must exist (foreign key): without one the file is removed again
    with pytest.raises(RecordingError) as refused:
        await store.open("no-such-session", width=80, height=24, term="x", title="t", echo_tracking=False,
                         on_failure=print)
    assert refused.value.safe_message == "recording could not be started: the recording index is unavailable"
    assert not list(env.config.recordings_dir.rglob("*.bcast"))

    rec = await env.open(store)
    with pytest.raises(RecordingError, match="a recording of this session exists"):
        await env.open(store, session_id=rec.session_id)
    await rec.close("done")
    assert verify(rec.path, env.public_key).ok  # the refused second open did not touch it

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(RecordingError) as refused:
        await env.open(env.store(recording__dir=str(blocker)))
    assert refused.value.safe_message == "recording could not be started: recording storage unavailable"


async def test_open_after_shutdown_is_refused_cleanly(env):
    store = env.store()
    store.shutdown()
    with pytest.raises(RecordingError, match="stopping"):
        await env.open(store)
