"""Event-loop side of a recording: O(1) appends, timed flushes, backpressure and fail-closed."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable

from bastion.clock import Clock
from bastion.config import Config
from bastion.recorder.redact import HIDDEN, EchoTracker
from bastion.recorder.jobs import RecordingWriter
from bastion.recorder.writer import Event, WriteState

log = logging.getLogger("bastion.recorder")

# Past this much raw data waiting for the writer the caller is asked to stop reading.
BACKLOG_BYTES = 4 * 1024 * 1024
BACKLOG_CHUNKS = 8
# At most this much raw output per write job (see _take_job).
JOB_BYTES = 1024 * 1024
# A write job (fdatasync included) that takes longer means the storage is gone.
IO_TIMEOUT = 30.0
DB_TIMEOUT = 30.0


def failure_reason(exc: BaseException, default: str = "recording could not be written") -> str:
    """A reason safe to show a user and to put in the audit log (no paths, no data)."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "recording storage full"
    if code == errno.EROFS:
        return "recording storage is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "recording storage is not writable"
    if code == errno.EIO:
        return "recording storage I/O error"
    if code == errno.ETIMEDOUT:
        return "recording storage is not responding"
    return default


def describe_exception(exc: BaseException) -> str:
    """For operators' logs: the kind of error, never the data being written."""
    if isinstance(exc, OSError):
        return f"{type(exc).__name__} errno={exc.errno} ({exc.strerror})"
    return type(exc).__name__


class SessionRecorder:
    """Records one session.  Every method is called from the event loop; the sealing and writing
    happen elsewhere (the sealer process, or a worker thread), in order, with at most the writer's
    `pipeline_depth` jobs in flight."""

    def __init__(self, *, recording_id: str, session_id: str, path: Path, writer: RecordingWriter,
                 clock: Clock, config: Config, echo_tracking: bool,
                 on_failure: Callable[[str], None], update_row: Callable[..., Awaitable[None]],
                 on_closed: Callable[[str], None]):
        self.recording_id = recording_id
        self.session_id = session_id
        self.path = path
        self.bytes_in = 0
        self.bytes_out = 0
        self._writer = writer
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._start = clock.monotonic()
        self._chunk_bytes: int = config["recording.chunk_bytes"]
        self._flush_interval: float = config["recording.flush_interval"]
        self._max_events: int = config["recording.queue_events"]
        self._backlog_bytes = max(BACKLOG_BYTES, BACKLOG_CHUNKS * self._chunk_bytes)
        self._echo = EchoTracker(config["recording.echo_window"]) if echo_tracking else None
        self._on_failure = on_failure
        self._update_row = update_row
        self._on_closed = on_closed

        self._buffer: list[Event] = []
        self._buffer_bytes = 0
        # Jobs sent and not yet handled, oldest first: (future, raw bytes, events).
        self._jobs: deque[tuple[asyncio.Future[WriteState], int, int]] = deque()
        self._depth = max(1, writer.pipeline_depth)
        self._timer: asyncio.TimerHandle | None = None
        self._flush_due = False
        self._last_time = 0.0
        self._hidden_run = False  # the last event is "<hidden>" input: more hidden input joins it
        self._blind_input_at: float | None = None
        self._backlogged = False
        self._drained: list[Callable[[], Any]] = []
        self._failed: str | None = None
        self._failure_task: asyncio.Task[None] | None = None
        self._closing = False
        self._state = writer.state

    # -- what the gateway calls -------------------------------------------------------------

    def output(self, data: bytes) -> None:
        """Bytes the target sent to the user."""
        if self._closing or self._failed is not None:
            return
        self.bytes_out += len(data)
        if not data:
            return
        now = self._now()
        if self._echo is not None and self._echo.pending:
            for time, payload in self._echo.output(now, data):
                self._record_input(time, payload)
        self._append(now, "o", bytes(data))

    def input(self, data: bytes) -> None:
        """Bytes the user sent to the target (recorded only as far as the target echoes them)."""
        if self._closing or self._failed is not None:
            return
        self.bytes_in += len(data)
        if not data:
            return
        now = self._now()
        if self._echo is None:
            # No terminal, so nothing is echoed: note that input happened, at most once per flush.
            if self._blind_input_at is None or now - self._blind_input_at >= self._flush_interval:
                self._blind_input_at = now
                self._append(now, "i", HIDDEN)
            return
        for time, payload in self._echo.input(now, bytes(data)):
            self._record_input(time, payload)
        if self._echo.pending and self._timer is None:
            self._arm_timer()

    def resize(self, width: int, height: int) -> None:
        if self._closing or self._failed is not None:
            return
        self._append(self._now(), "r", f"{int(width)}x{int(height)}")

    def marker(self, text: str) -> None:
        if self._closing or self._failed is not None:
            return
        self._append(self._now(), "m", str(text))

    @property
    def backlogged(self) -> bool:
        return self._backlogged

    def on_drained(self, callback: Callable[[], Any]) -> None:
        """Call `callback` once, soon, when the recorder is no longer backlogged."""
        if self._backlogged:
            self._drained.append(callback)
        else:
            self._loop.call_soon(callback)

    @property
    def failed(self) -> str | None:
        return self._failed

    @property
    def state(self) -> WriteState:
        """What is durably on disk so far."""
        return self._state

    async def flush(self) -> None:
        """Write what is waiting now and return once it is on disk (undecided input stays)."""
        # The jobs in flight, then everything that queued behind them, the oldest job first.
        for _ in range(2 + self._depth + self._buffer_bytes // JOB_BYTES):
            if self._closing or self._failed is not None:
                return
            if self._buffer:
                self._flush_due = True  # what a busy pipeline cannot take now goes when a job is done
                self._kick()
            if not self._jobs:
                return
            await self._wait(self._jobs[0][0])

    async def close(self, end_reason: str) -> None:
        """Flush, write the signed manifest, fsync and update the index row.

        Never raises for storage or database trouble: a write failure has already been
        reported through `on_failure` and shows in `failed` and in the row's status.
        """
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        try:
            if self._failed is None and self._echo is not None:
                for time, payload in self._echo.finish():
                    self._record_input(time, payload)
            await self._wait_all()
            # What is still buffered goes in bounded jobs first, so the last job is no bigger than one.
            while self._buffer_bytes > JOB_BYTES and self._failed is None:
                self._kick()
                if not self._jobs:
                    break
                await self._wait(self._jobs[0][0])
            await self._wait_all()
            if self._failed is None:
                await self._finish(end_reason)
            if self._failure_task is not None:
                await asyncio.wait({self._failure_task}, timeout=2 * IO_TIMEOUT + DB_TIMEOUT)
            await self._save_row(status="failed" if self._failed else "sealed", closed_at=self._clock.now())
        finally:
            self._release_drained()
            self._on_closed(self.recording_id)

    # -- inside -------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock.monotonic() - self._start

    def _record_input(self, time: float, payload: bytes | str) -> None:
        if payload == HIDDEN:
            if self._hidden_run:
                return  # one "<hidden>" per unechoed stretch: the count of keys is not recorded
            self._append(time, "i", HIDDEN)
            self._hidden_run = True
        else:
            self._append(time, "i", payload)

    def _append(self, time: float, code: str, payload: bytes | str) -> None:
        # Released input carries the time it was typed, which may precede events already
        # recorded; asciicast needs non-decreasing times.
        if time < self._last_time:
            time = self._last_time
        self._last_time = time
        self._buffer.append((time, code, payload))
        self._buffer_bytes += len(payload)
        self._hidden_run = False
        if not self._closing:
            if self._buffer_bytes >= self._chunk_bytes:
                self._kick()
            elif self._timer is None:
                self._arm_timer()
        self._check_backlog()

    def _arm_timer(self) -> None:
        self._timer = self._loop.call_later(self._flush_interval, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing or self._failed is not None:
            return
        if self._echo is not None and self._echo.pending:
            for time, payload in self._echo.expire(self._now()):
                self._record_input(time, payload)
        if self._buffer:
            self._flush_due = True
            self._kick()
        waiting = self._buffer or (self._echo is not None and self._echo.pending)
        if waiting and self._timer is None and self._failed is None:
            self._arm_timer()

    def _kick(self) -> None:
        """Send buffered events as jobs while the pipeline has room.

        The first job in flight takes whatever is buffered; a further one goes only with a whole job's
        worth, so bulk output keeps the next job waiting in the sealer while it seals the one before,
        and a trickle of output still goes in one job at a time.
        """
        while self._buffer and self._failed is None and len(self._jobs) < self._depth:
            if self._jobs and self._buffer_bytes < JOB_BYTES:
                break
            batch, size = self._take_job()
            self._buffer_bytes -= size
            try:
                job = self._writer.append(batch)
            except RuntimeError as exc:  # the writer stopped under us
                self._fail("recording writer stopped", exc)
                return
            self._sent(job, size, len(batch))
        self._flush_due = self._flush_due and bool(self._buffer)  # the rest goes when a job is done

    def _sent(self, job: asyncio.Future[WriteState], size: int, events: int) -> None:
        self._jobs.append((job, size, events))
        job.add_done_callback(self._on_job_done)

    def _take_job(self) -> tuple[list[Event], int]:
        """The next job: the whole buffer, or its first JOB_BYTES under bulk output.

        A bounded job keeps the relay and the sealer working at the same time: while one job is sealed,
        the next fills, and the session is paused only when the sealer falls a whole backlog behind.
        """
        if self._buffer_bytes <= JOB_BYTES:
            batch, self._buffer = self._buffer, []
            return batch, self._buffer_bytes
        size = count = 0
        for _, _, payload in self._buffer:
            count += 1
            size += len(payload)
            if size >= JOB_BYTES:
                break
        batch, self._buffer = self._buffer[:count], self._buffer[count:]
        return batch, size

    def _on_job_done(self, job: asyncio.Future[WriteState]) -> None:
        # Jobs finish in the order they were sent; each is handled once (close() may handle one before
        # the loop runs this callback), oldest first, so the state only ever moves forward.
        while self._jobs and self._jobs[0][0].done():
            done, _, _ = self._jobs.popleft()
            if self._failed is not None:
                if not done.cancelled():
                    done.exception()  # retrieved: a job queued behind a failed one fails too, as expected
                continue
            exc = RuntimeError("write job cancelled") if done.cancelled() else done.exception()
            if exc is not None:
                self._fail(failure_reason(exc), exc)
                continue
            self._state = done.result()
        if self._failed is not None:
            return
        if not self._closing and self._buffer and (
                self._flush_due or self._backlogged or self._buffer_bytes >= self._chunk_bytes):
            self._kick()
        self._check_backlog()

    async def _wait(self, job: asyncio.Future[WriteState]) -> None:
        done, _ = await asyncio.wait({job}, timeout=IO_TIMEOUT)
        if not done:
            self._fail("recording storage is not responding")
            return
        self._on_job_done(job)

    async def _wait_all(self) -> None:
        """Until every job in flight is handled, or the recording has failed."""
        while self._jobs and self._failed is None:
            await self._wait(self._jobs[0][0])

    async def _finish(self, end_reason: str) -> None:
        batch, self._buffer = self._buffer, []
        self._buffer_bytes = 0
        try:
            job = self._writer.finish(batch, duration=self._now(), end_reason=end_reason,
                                      closed_at=self._clock.now().isoformat())
        except RuntimeError as exc:
            self._fail("recording writer stopped", exc)
            return
        self._sent(job, 0, 0)
        await self._wait(job)

    def _check_backlog(self) -> None:
        # In flight: at most pipeline_depth jobs, so summing them here costs next to nothing.
        waiting = self._buffer_bytes + sum(size for _, size, _ in self._jobs)
        events = len(self._buffer) + sum(count for _, _, count in self._jobs)
        if self._backlogged:
            # Resume at half the limit so a steady stream does not flap between states.
            if waiting <= self._backlog_bytes // 2 and events <= self._max_events // 2:
                self._backlogged = False
                self._release_drained()
        elif waiting > self._backlog_bytes or events > self._max_events:
            self._backlogged = True
            if not self._closing:
                self._kick()  # a paused caller must not wait for the timer

    def _release_drained(self) -> None:
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            self._loop.call_soon_threadsafe(callback)

    def _fail(self, reason: str, exc: BaseException | None = None) -> None:
        if self._failed is not None:
            return
        self._failed = reason
        log.warning("recording %s of session %s failed: %s%s", self.recording_id, self.session_id, reason,
                    f" ({describe_exception(exc)})" if exc is not None else "")
        self._cancel_timer()
        self._buffer, self._buffer_bytes = [], 0
        self._echo = None
        self._backlogged = False
        self._release_drained()
        self._loop.call_soon(self._notify_failure, reason)
        self._failure_task = self._loop.create_task(self._seal_failed(reason))

    def _notify_failure(self, reason: str) -> None:
        try:
            self._on_failure(reason)
        except Exception:
            log.exception("on_failure callback of recording %s raised", self.recording_id)

    async def _seal_failed(self, reason: str) -> None:
        """Cut the file back to its last whole chunk, seal it as failed, mark the row failed."""
        pending = {job for job, _, _ in self._jobs}
        if pending:
            _, waiting = await asyncio.wait(pending, timeout=IO_TIMEOUT)
            if waiting:
                log.error("recording %s: storage still not responding; file left as it is", self.recording_id)
                await self._save_row(status="failed")
                return
            if self._jobs:
                self._on_job_done(self._jobs[0][0])  # handled oldest first: no failure left unretrieved
            self._jobs.clear()
        try:
            repair = self._writer.abandon(duration=self._now(), end_reason=f"recording failed: {reason}",
                                          closed_at=self._clock.now().isoformat())
        except RuntimeError:
            log.error("recording %s: writer stopped; file left as it is", self.recording_id)
        else:
            done, _ = await asyncio.wait({repair}, timeout=IO_TIMEOUT)
            if repair in done and repair.exception() is None:
                self._state = repair.result()
            else:
                log.error("recording %s: could not seal the file after the failure", self.recording_id)
        await self._save_row(status="failed")

    async def _save_row(self, **values: Any) -> None:
        values.update(chunks=self._state.chunks, size=self._state.size, last_hash=self._state.last_hash)
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                await self._update_row(**values)
        except Exception as exc:
            # The file is the record; seal_abandoned() brings a stale row in line at next start.
            log.error("recording %s: index row not updated (%s)", self.recording_id, describe_exception(exc))
