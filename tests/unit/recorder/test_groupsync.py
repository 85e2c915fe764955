"""One filesystem sync per interval shared by every open recording; a failed sync fails the write."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

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
