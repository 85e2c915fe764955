"""Where a recording's write jobs run: the interface the event loop sees, and its worker-thread form."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from typing import Protocol

from bastion.recorder.writer import ChunkWriter, Event, WriteState


class RecordingWriter(Protocol):
    """Seals and writes one recording; each call is one job, and jobs run one at a time, in order.

    `pipeline_depth` is how many jobs the caller may have in flight: more than one only where the jobs
    are queued and run in the order sent, and a failed job makes every later one fail too.
    """

    pipeline_depth: int

    @property
    def state(self) -> WriteState: ...

    def append(self, events: list[Event]) -> "asyncio.Future[WriteState]": ...

    def finish(self, events: list[Event], *, duration: float, end_reason: str,
               closed_at: str) -> "asyncio.Future[WriteState]": ...

    def abandon(self, *, duration: float, end_reason: str, closed_at: str) -> "asyncio.Future[WriteState]": ...


class ThreadedWriter:
    """A ChunkWriter run in worker threads of this process: a RecordingStore given no sealer (the recorder's
    unit tests drive the writer in-process this way; the gateway always seals in the sealer process).

    Raises RuntimeError from a job method when the executor is shut down.
    """

    pipeline_depth = 1  # the executor's threads could run a second job beside the first

    def __init__(self, chunk: ChunkWriter, executor: Executor):
        self.chunk = chunk
        self._executor = executor

    @property
    def state(self) -> WriteState:
        return self.chunk.state

    def append(self, events: list[Event]) -> "asyncio.Future[WriteState]":
        return self._run(functools.partial(self.chunk.append, events))

    def finish(self, events: list[Event], *, duration: float, end_reason: str,
               closed_at: str) -> "asyncio.Future[WriteState]":
        return self._run(functools.partial(self.chunk.finish, events, duration=duration, end_reason=end_reason,
                                           closed_at=closed_at))

    def abandon(self, *, duration: float, end_reason: str, closed_at: str) -> "asyncio.Future[WriteState]":
        return self._run(functools.partial(self.chunk.abandon, duration=duration, end_reason=end_reason,
                                           closed_at=closed_at))

    def _run(self, job: functools.partial) -> "asyncio.Future[WriteState]":
        return asyncio.get_running_loop().run_in_executor(self._executor, job)
