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
# Jobs are held at most this long in a row: under bulk traffic that never stops, replay seek points
# and the search index still come, at the lowest priority (bastion/lowpriority.py). Well inside the
# jobs' own time limits (search.index.JOB_TIMEOUT, recordings.KEYFRAME_JOB_TIMEOUT).
MAX_HOLD_SECONDS = 300.0


class _Live(Protocol):
    id: str
    bytes_up: int
    bytes_down: int


class QuietGate:
    """Keeps post-session jobs (replay keyframes, search index) off the CPU while the relay is busy.

    The jobs already run at the lowest CPU priority, but on 2 cores that was not enough: an `scp` right
    after a recorded 256 MiB `cat` measured 112-129 MiB/s while that session's jobs ran, and 157-210
    once they were done. So a job starts at once when no session is live, and otherwise after a sample
    (SAMPLE_SECONDS) in which live sessions moved less than BUSY_BYTES_PER_SECOND (`wait`); and a job
    that is running is stopped (SIGSTOP) while they move more, and continued after (`pausing`). Once
    jobs have been held MAX_HOLD_SECONDS in a row, they go regardless until the relay is quiet again.
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
        self._held_since: float | None = None  # when jobs began to be held, while the relay stays busy

    async def wait(self) -> float:
        """Return once the relay is quiet for a sample, or jobs have been held long enough; seconds held."""
        start = self._clock()
        while True:
            before = self._moved()
            if not before:  # no live session to slow down
                self._held_since = None
                return self._clock() - start
            await self._sleep(self._sample)
            if not self._hold(before, self._moved()):
                return self._clock() - start

    @contextlib.asynccontextmanager
    async def pausing(self, pid: int) -> AsyncIterator[None]:
        """While the body runs, stop process `pid` (a job) whenever jobs are held, and continue it after.

        Signals go through a pidfd, so a job that has ended and been reaped is never confused with a
        new process given its PID. Where pidfds are missing, the job just runs.
        """
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        watcher = None if pidfd is None else asyncio.ensure_future(self._pause(pidfd))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait({watcher})  # its own cancellation; never swallows the caller's
            if pidfd is not None:
                os.close(pidfd)

    async def _pause(self, pidfd: int) -> None:
        stopped = False
        try:
            while True:
                before = self._moved()
                await self._sleep(self._sample)
                hold = self._hold(before, self._moved())
                if hold != stopped:
                    signal.pidfd_send_signal(pidfd, signal.SIGSTOP if hold else signal.SIGCONT)
                    stopped = hold
        except ProcessLookupError:
            return  # the job has ended
        finally:
            if stopped:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGCONT)  # never left stopped

    def _hold(self, before: dict[str, int], after: dict[str, int]) -> bool:
        """Whether jobs are to be held after a sample from `before` to `after`."""
        # Only sessions alive at both ends count: one that ended in between moved what it moved before.
        moved = sum(after[key] - count for key, count in before.items() if key in after)
        if moved < self._busy_rate * self._sample:
            self._held_since = None
            return False
        now = self._clock()
        if self._held_since is None:
            self._held_since = now - self._sample
        return now - self._held_since < self._max_hold

    def _moved(self) -> dict[str, int]:
        return {live.id: live.bytes_up + live.bytes_down for live in self._live()}
