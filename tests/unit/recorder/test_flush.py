"""When chunks reach the disk (timer, size, close) and how a slow writer pushes back on the session."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bastion.recorder.reader import iter_lines, verify

from .conftest import wait_until


class SlowWorker:
    """One worker thread that can be held until the test lets it go: a 'slow' writer on demand."""

    def __init__(self):
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.gate = threading.Event()

    def hold(self) -> None:
        self.executor.submit(self.gate.wait, 60)

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def worker():
    slow = SlowWorker()
    yield slow
    slow.release()
    slow.executor.shutdown(wait=True)


async def test_a_chunk_reaches_the_disk_after_the_flush_interval_without_close(env):
    store = env.store(recording__flush_interval=0.05)
    rec = await env.open(store)
    preamble_only = rec.path.stat().st_size
    rec.output(b"typed before any crash\r\n")
    assert rec.path.stat().st_size == preamble_only  # appending never writes in the event loop
    await wait_until(lambda: verify(rec.path, env.public_key).chunks >= 1)
    report = verify(rec.path, env.public_key)
    assert report.status == "unsealed"  # still open, yet readable up to here
    assert "typed before any crash" in "\n".join(iter_lines(rec.path, env.vault, env.public_key, force=True))
    await rec.close("done")
    assert verify(rec.path, env.public_key).ok


async def test_enough_data_seals_a_chunk_before_the_interval(env):
    store = env.store(recording__flush_interval=3600, recording__chunk_bytes=1024)
    rec = await env.open(store)
    rec.output(b"z" * 1500)
    await wait_until(lambda: rec.state.chunks >= 1)  # the timer is an hour away
    assert verify(rec.path, env.public_key).chunks >= 1
    await rec.close("done")


async def test_backpressure_then_drain(env, worker):
    store = env.store(executor=worker.executor, recording__chunk_bytes=64 * 1024)
    rec = await env.open(store)
    worker.hold()
    drained = []
    block = os.urandom(32 * 1024)
    sent = 0
    while not rec.backlogged:
        rec.output(block)
        sent += len(block)
        assert sent < 64 * 1024 * 1024, "never backlogged"
    assert sent > 4 * 1024 * 1024  # about 4 MiB waiting before the caller is asked to pause
    rec.on_drained(lambda: drained.append("drained"))
    assert drained == []
    worker.release()  # the writer catches up
    await wait_until(lambda: drained)
    assert drained == ["drained"] and not rec.backlogged
    rec.on_drained(lambda: drained.append("at once"))  # not backlogged: called soon
    await wait_until(lambda: len(drained) == 2)
    await rec.close("done")
    assert rec.bytes_out == sent
    report = verify(rec.path, env.public_key, vault=env.vault)
    assert report.ok


async def test_a_failure_while_backlogged_releases_the_paused_caller(env, worker):
    rec = await env.open(env.store(executor=worker.executor))
    worker.hold()
    while not rec.backlogged:
        rec.output(os.urandom(32 * 1024))
    released = []
    rec.on_drained(lambda: released.append(True))
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, rec._writer.chunk._fd)  # every write from now on fails with ENOSPC
    finally:
        os.close(full)
    worker.release()
    await wait_until(lambda: released and env.failures)
    assert rec.failed == "recording storage full" and not rec.backlogged
    await rec.close("ended")
    assert (await env.row(rec.recording_id)).status == "failed"


async def test_close_is_idempotent_and_events_after_it_are_ignored(env):
    rec = await env.open()
    rec.output(b"one")
    await rec.close("done")
    size = rec.path.stat().st_size
    rec.output(b"two")
    rec.input(b"three")
    rec.resize(1, 1)
    rec.marker("four")
    await rec.close("again")
    assert rec.path.stat().st_size == size
    assert verify(rec.path, env.public_key).ok


async def test_many_tiny_events_backlog_and_drain_without_waiting_for_the_timer(env, worker):
    store = env.store(executor=worker.executor, recording__flush_interval=3600, recording__queue_events=64)
    rec = await env.open(store)
    worker.hold()
    sent = 0
    while not rec.backlogged:
        rec.output(b"k")
        sent += 1
        assert sent < 10_000, "never backlogged"
    assert sent <= 65
    drained = []
    rec.on_drained(lambda: drained.append(True))
    worker.release()
    await wait_until(lambda: drained)  # the flush timer is an hour away: the backlog itself kicked the writer
    await rec.close("done")
    assert verify(rec.path, env.public_key).ok
