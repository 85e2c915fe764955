"""Holds post-session jobs back while live sessions move bulk data, so the jobs do not slow them down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import AsyncIterator, Awaitable, Callable, Iterable, Protocol

# Above this rate (bytes relayed per second, both ways, over every live session) the gateway is busy
# with bulk data. A thousand people typing move about 10 KB/s; one `scp` moves a hundred MiB/s or more.
BUSY_BYTES_PER_SECOND = 1 << 20
SAMPLE_SECONDS = 0.1
# A job is held at most this long before it starts, and stopped at most this long in all while it runs:
# under bulk traffic that never stops, replay seek points and the search index still come, at the lowest
# priority (bastion/lowpriority.py), and a job's stopped time stays well inside its own time limit
# (search.index.JOB_TIMEOUT, recordings.KEYFRAME_JOB_TIMEOUT), which counts it.
MAX_HOLD_SECONDS = 300.0


class _Live(Protocol):
    id: str
    bytes_up: int
    bytes_down: int


class QuietGate:
    """Keeps post-session jobs (replay keyframes, search index) off the CPU while the relay is busy.

    The jobs already run at the lowest CPU priority, but on 2 cores that was not enough: an `scp` right
    after a recorded 256 MiB `cat` measured 112-129 MiB/s while that session's jobs ran, and 193-210
    once they were done. So a job starts at once when no session is live, and otherwise after a sample
    (SAMPLE_SECONDS) in which live sessions moved less than BUSY_BYTES_PER_SECOND (`wait`); and a job
    that is running is stopped (SIGSTOP) while they move more, and continued after (`pausing`). Each
    job is held at most MAX_HOLD_SECONDS before it starts and stopped at most that long in all.
    """

    def __init__(self, live: Callable[[], Iterable[_Live]], *, busy_rate: float = BUSY_BYTES_PER_SECOND,
                 sample: float = SAMPLE_SECONDS, max_hold: float = MAX_HOLD_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self._live = live
        self._busy_rate = busy_rate
        self._sample = sample
        self._max_hold = max_hold
        self._clock = clock
        self._sleep = sleep

    async def wait(self) -> float:
        """Return once the relay is quiet for a sample, or after MAX_HOLD_SECONDS; seconds held."""
        start = self._clock()
        counts = self._moved()
        while counts:  # with no live session there is nothing to slow down
            await self._sleep(self._sample)
            before, counts = counts, self._moved()
            if not self._busy(before, counts) or self._clock() - start >= self._max_hold:
                break
        return self._clock() - start

    @contextlib.asynccontextmanager
    async def pausing(self, pid: int) -> AsyncIterator[None]:
        """While the body runs, stop process `pid` (a job) whenever the relay is busy, and continue it after.

        Signals go through a pidfd, so a job that has ended and been reaped is never confused with a
        new process given its PID. Where pidfds are missing, the job just runs.
        """
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            yield
            return
        watcher = asyncio.ensure_future(self._pause(pidfd))
        # Closed once the watcher is done, however it ends (even cancelled before it ran).
        watcher.add_done_callback(lambda _: os.close(pidfd))
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.wait({watcher})  # its own cancellation; never swallows the caller's

    async def _pause(self, pidfd: int) -> None:
        """Stop and continue the job behind `pidfd` with the relay; returns once the job is gone."""
        stopped_since: float | None = None
        stopped_for = 0.0  # in all, so the job's own time limit is never spent waiting
        try:
            counts = self._moved()
            while True:
                await self._sleep(self._sample)
                before, counts = counts, self._moved()
                busy = self._busy(before, counts) and stopped_for < self._max_hold
                now = self._clock()
                if busy and stopped_since is None:
                    signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
                    stopped_since = now
                elif stopped_since is not None and (not busy or stopped_for + now - stopped_since >= self._max_hold):
                    signal.pidfd_send_signal(pidfd, signal.SIGCONT)
                    stopped_for += now - stopped_since
                    stopped_since = None
        except ProcessLookupError:
            return  # the job has ended
        finally:
            if stopped_since is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGCONT)  # never left stopped

    def _busy(self, before: dict[str, int], after: dict[str, int]) -> bool:
        """Whether live sessions moved bulk data between two counts a sample apart."""
        # Only sessions alive at both ends count: one that ended in between moved what it moved before.
        moved = sum(after[key] - count for key, count in before.items() if key in after)
        return moved >= self._busy_rate * self._sample

    def _moved(self) -> dict[str, int]:
        return {live.id: live.bytes_up + live.bytes_down for live in self._live()}
