"""One filesystem sync per interval shared by every open recording; a failed sync fails the write."""

from __future__ import annotations

import ctypes
import errno
import os
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.recorder import writer
from bastion.recorder.sink import failure_reason


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(monkeypatch):
    time, calls = FakeTime(), []

    def syncfs(fd: int) -> int:
        calls.append(fd)
        return 0

    monkeypatch.setattr(writer, "monotonic", time)
    monkeypatch.setattr(writer, "_SYNCFS", syncfs)
    return time, calls


def test_many_recordings_share_one_sync_per_interval(fake):
    time, calls = fake
    interval = [1.0]
    group = writer.GroupSync(lambda: interval[0])
    for fd in (3, 4, 5):
        group.after_write(fd)
    assert calls == []  # nothing is due yet
    time.now += 1.0
    for fd in (3, 4, 5, 6):
        group.after_write(fd)
    assert calls == [3]  # the first writer after the interval syncs the filesystem for all of them
    time.now += 0.5
    group.after_write(4)
    assert calls == [3]
    interval[0] = 0.25  # recording.flush_interval changed at runtime: read at use
    group.after_write(4)
    assert calls == [3, 4]


def test_a_failed_filesystem_sync_fails_the_write(monkeypatch, fake):
    time, _ = fake

    def broken(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(writer, "_SYNCFS", broken)
    group = writer.GroupSync(lambda: 1.0)
    time.now += 2
    with pytest.raises(OSError) as caught:
        group.after_write(3)
    assert caught.value.errno == errno.EIO
    with pytest.raises(OSError):  # still due: the next write tries again rather than pretending
        group.after_write(3)


def test_the_real_syncfs_runs_on_this_system(tmp_path):
    assert writer._SYNCFS is not None, "glibc has had syncfs since 2.14"
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"x")
        assert writer._SYNCFS(fd) == 0
    finally:
        os.close(fd)


def test_a_background_sync_does_not_hold_up_the_writer_and_a_second_one_waits_its_turn(monkeypatch, fake):
    time, _ = fake
    entered, gate, synced = threading.Event(), threading.Event(), []

    def slow(fd: int) -> int:
        entered.set()
        gate.wait(30)
        synced.append(os.fstat(fd).st_ino)  # raises if the descriptor it was given is closed
        return 0

    monkeypatch.setattr(writer, "_SYNCFS", slow)
    group = writer.GroupSync(lambda: 1.0, background=True)
    source = os.open("/dev/null", os.O_WRONLY)
    inode = os.fstat(source).st_ino
    time.now += 2
    group.after_write(source)  # returns while the disk is still busy
    assert entered.wait(30) and synced == []
    assert (group.started, group.completed) == (1, 0)  # what was written is not yet known durable
    group.after_write(source)  # due, but one sync at a time: skipped, not queued behind it
    os.close(source)  # the recording closes meanwhile: the sync holds a descriptor of its own
    gate.set()
    for _ in range(3000):
        if group.completed:
            break
        threading.Event().wait(0.01)
    assert (group.started, group.completed) == (1, 1) and synced == [inode]
    group.check(0)  # nothing failed


def test_a_failed_background_sync_fails_every_recording_open_at_the_time_and_no_later_one(
        monkeypatch, fake, tmp_path):
    time, _ = fake
    done = threading.Event()

    def broken(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        done.set()
        return -1

    monkeypatch.setattr(writer, "_SYNCFS", broken)
    group = writer.GroupSync(lambda: 1.0, background=True)

    def recording(name: str) -> writer.ChunkWriter:
        fd = os.open(tmp_path / name, os.O_CREAT | os.O_WRONLY, 0o600)
        return writer.ChunkWriter(fd, name, os.urandom(32), b"P", b'{"version": 2}\n', 1024,
                                  Ed25519PrivateKey.generate(), group_sync=group)

    early, idle = recording("early"), recording("idle")
    time.now += 2
    early.append([(0.0, "o", b"x" * 2000)])  # its write starts the sync, which fails in the background
    assert done.wait(30)
    for _ in range(3000):
        if group.failures:
            break
        threading.Event().wait(0.01)
    for open_then in (early, idle):  # written since or not: both were open when the sync failed
        before = open_then.state
        with pytest.raises(OSError) as caught:
            open_then.append([(0.1, "o", b"y" * 2000)])
        assert caught.value.errno == errno.EIO and open_then.state == before
    monkeypatch.setattr(writer, "_SYNCFS", lambda fd: 0)
    later = recording("later")  # opened after the failure: its bytes are for the next sync to cover
    later.append([(0.0, "o", b"z" * 2000)])
    assert later.state.chunks == 1


def test_a_hung_background_sync_fails_every_write_until_it_returns(monkeypatch, fake):
    time, _ = fake
    gate = threading.Event()
    monkeypatch.setattr(writer, "_SYNCFS", lambda fd: gate.wait(30) and 0)
    group = writer.GroupSync(lambda: 1.0, background=True, stall_limit=30.0)
    source = os.open("/dev/null", os.O_WRONLY)
    try:
        time.now += 2
        group.after_write(source)
        group.check(0)  # running, not yet hung
        time.now += 31
        with pytest.raises(OSError) as caught:
            group.check(0)
        assert caught.value.errno == errno.ETIMEDOUT
        assert failure_reason(caught.value) == "recording storage is not responding"  # what the user is told
        gate.set()
        for _ in range(3000):
            if group.completed:
                break
            threading.Event().wait(0.01)
        group.check(0)  # it came back: writes go on
    finally:
        gate.set()
        os.close(source)


def test_each_write_starts_its_write_back_and_drops_what_came_before_and_what_a_sync_covered(
        monkeypatch, fake, tmp_path):
    time, _ = fake
    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        calls.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(writer.os, "posix_fadvise", record)
    monkeypatch.setattr(writer, "RECENT_BYTES", 64 * 1024)
    page = writer.PAGE_SIZE
    group = writer.GroupSync(lambda: 1.0)
    fd = os.open(tmp_path / "r.bcast", os.O_CREAT | os.O_WRONLY, 0o600)
    chunk = writer.ChunkWriter(fd, "s", os.urandom(32), b"P" * 10, b'{"version": 2}\n', 4096,
                               Ed25519PrivateKey.generate(), group_sync=group)
    noise = [(0.0, "o", os.urandom(20000).hex().encode())]  # 40 KB a write

    def append() -> tuple[int, int, list[tuple[int, int]]]:
        calls.clear()
        start = chunk.state.size
        chunk.append(noise)
        return start, chunk.state.size, list(calls)

    spans, filled = [], 0
    for _ in range(4):
        start, end, made = append()
        spans.append((start, end))
        # Write-back starts at once for exactly the pages filled since the last write (the partial last
        # page waits until it is full).
        assert made[0] == (filled, (end & ~(page - 1)) - filled)
        for offset, length in made[1:]:
            assert offset % page == 0 and offset + length <= filled  # a drop never reaches the new pages
            assert offset >= filled - 64 * 1024 - page  # ...nor further back than RECENT_BYTES
        filled = end & ~(page - 1)
    start, end, made = append()
    assert (0, 0) not in made and all(offset + length <= start for offset, length in made[1:])
    time.now += 2  # a sync is due: this write syncs it, and what the sync covers is dropped from 0 on,
    _, _, made = append()  # up to the mark taken at the first write (one mark is outstanding at a time)
    assert made[-1] == (0, spans[0][1] & ~(page - 1)), made
    _, _, made = append()
    assert all(offset >= spans[0][1] & ~(page - 1) for offset, _ in made[1:])  # never again from 0
    chunk.finish([], duration=1.0, end_reason="exited", closed_at="now")
    assert calls[-1] == (0, 0)  # sealed and fsynced: the whole file


def _advice_and_writer(monkeypatch, tmp_path) -> tuple[list[tuple[int, int]], writer.ChunkWriter]:
    """The (offset, length) of every fadvise call, and a writer whose sync never falls due."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(writer.os, "posix_fadvise", lambda fd, offset, length, advice: calls.append((offset, length)))
    fd = os.open(tmp_path / "r.bcast", os.O_CREAT | os.O_WRONLY, 0o600)
    chunk = writer.ChunkWriter(fd, "s", os.urandom(32), b"P" * 10, b'{"version": 2}\n', 4096,
                               Ed25519PrivateKey.generate(), group_sync=writer.GroupSync(lambda: 3600.0))
    return calls, chunk


def test_small_writes_leave_their_partial_page_alone_until_it_is_full(monkeypatch, tmp_path):
    # An interactive session's job is a few hundred bytes; advising its partial page started a write-back
    # per job (the page then written again by the next job) and doubled the sealer's CPU per job.
    calls, chunk = _advice_and_writer(monkeypatch, tmp_path)
    page = writer.PAGE_SIZE
    sizes, advised = [], []  # file size and advice calls so far, after each write
    while chunk.state.size < 3 * page:
        chunk.append([(0.5, "o", b"ls -l\r\n")])
        sizes.append(chunk.state.size)
        advised.append(len(calls))
    first_full = next(n for n, size in enumerate(sizes) if size >= page)
    assert first_full > 5 and advised[first_full - 1] == 0  # many writes, no advice before a page filled
    # Then advice only for filled pages, each ending on a page boundary: never the page still being written.
    assert calls[0] == (0, page)
    assert all((offset + length) % page == 0 for offset, length in calls), calls
    assert len(calls) <= 2 * (sizes[-1] // page)  # per page filled: its write-back, and the drop before it
    chunk.finish([], duration=1.0, end_reason="exited", closed_at="now")


def test_an_abandoned_recording_leaves_the_page_cache_as_a_sealed_one_does(monkeypatch, tmp_path):
    calls, chunk = _advice_and_writer(monkeypatch, tmp_path)
    chunk.append([(0.5, "o", b"x" * 100)])
    calls.clear()
    chunk.abandon(duration=1.0, end_reason="storage failed", closed_at="now")
    assert calls == [(0, 0)] and not chunk.is_open
