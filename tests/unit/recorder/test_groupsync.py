"""One filesystem sync per interval shared by every open recording; a failed sync fails the write."""

from __future__ import annotations

import ctypes
import errno
import os
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.recorder import writer


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
        synced.append(fd)
        return 0

    monkeypatch.setattr(writer, "_SYNCFS", slow)
    group = writer.GroupSync(lambda: 1.0, background=True)
    source = os.open("/dev/null", os.O_WRONLY)
    try:
        time.now += 2
        group.after_write(source)  # returns while the disk is still busy
        assert entered.wait(30) and synced == []
        assert (group.started, group.completed) == (1, 0)  # what was written is not yet known durable
        group.after_write(source)  # due, but one sync at a time: skipped, not queued behind it
        gate.set()
        for _ in range(3000):
            if group.completed:
                break
            threading.Event().wait(0.01)
        assert (group.started, group.completed) == (1, 1) and len(synced) == 1
        assert synced[0] != source  # it synced through its own descriptor: the writer may close its own
    finally:
        os.close(source)


def test_a_failed_background_sync_fails_the_next_write_of_every_recording(monkeypatch, fake):
    time, _ = fake
    done = threading.Event()

    def broken(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        done.set()
        return -1

    monkeypatch.setattr(writer, "_SYNCFS", broken)
    group = writer.GroupSync(lambda: 1.0, background=True)
    time.now += 2
    source = os.open("/dev/null", os.O_WRONLY)
    group.after_write(source)
    os.close(source)
    assert done.wait(30)
    for _ in range(3000):
        if group._failure is not None:
            break
        threading.Event().wait(0.01)
    for fd in (5, 6):  # any recording, due or not
        with pytest.raises(OSError) as caught:
            group.after_write(fd)
        assert caught.value.errno == errno.EIO
    assert group.completed == 0


def test_only_pages_a_finished_sync_covers_are_dropped_from_the_cache(monkeypatch, fake, tmp_path):
    time, _ = fake
    advised: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            advised.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(writer.os, "posix_fadvise", record)
    group = writer.GroupSync(lambda: 1.0)
    fd = os.open(tmp_path / "r.bcast", os.O_CREAT | os.O_WRONLY, 0o600)
    chunk = writer.ChunkWriter(fd, "s", os.urandom(32), b"P" * 10, b'{"version": 2}\n', 4096,
                               Ed25519PrivateKey.generate(), group_sync=group)
    noise = [(0.0, "o", os.urandom(20000).hex().encode())]
    chunk.append(noise)
    first = chunk.state.size
    dropped = [span for span in advised if span[0] == 0]
    assert dropped == []  # nothing synced yet: only write-back was started, for the new bytes
    time.now += 2
    chunk.append(noise)  # this write's sync covers the first write, whose whole pages are then dropped
    dropped = [span for span in advised if span[0] == 0]
    assert dropped == [(0, first & ~(writer.PAGE_SIZE - 1))]
    second = chunk.state.size
    chunk.append(noise)
    chunk.append(noise)
    assert [span for span in advised if span[0] == 0] == dropped  # no sync since: nothing more dropped
    chunk.finish([], duration=1.0, end_reason="exited", closed_at="now")
    assert advised[-1] == (0, 0) and second < chunk.state.size  # sealed and fsynced: the whole file
