"""Shared memory for recording jobs: the gateway copies output bytes in, the sealer reads them in place.

Sent over the socket pair, every byte of output was copied by marshal and again into the kernel on the
event loop: 1.07-1.12 ms of the event loop's CPU per MiB of bulk output under uvloop, measured here with
a stream of distinct 32 KiB events. Through the ring the event loop copies each event once (memcpy) and
the socket carries only each event's (offset, length): 0.33-0.40 ms/MiB.

The gateway owns the memory (a memfd whose size is sealed, so the sealer cannot shrink it under the
gateway's writes) and hands out regions first in, first out: the sealer runs jobs in the order sent and
answers each, so a job's region is free again once its reply is in. A job that does not fit goes inline
over the socket as before.
"""

from __future__ import annotations

import collections
import fcntl
import mmap
import os
from typing import Iterable, Iterator, Sequence

from bastion.recorder.writer import Event

# Room for both jobs in flight of a few bulk sessions at once (sink.JOB_BYTES each); interactive jobs
# are a few hundred bytes. Pages are used as jobs reach them; once jobs have gone all round the ring,
# all of it stays resident (in the gateway and the sealer alike) until that sealer is replaced.
RING_BYTES = 8 * 1024 * 1024

class PayloadRing:
    """The gateway's side: a sealed-size memfd mapped read-write, and the regions jobs in flight hold."""

    def __init__(self, size: int | None = None):
        size = RING_BYTES if size is None else size
        self.fd = os.memfd_create("bastion-recording-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self._map = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size
        self._held: collections.deque[tuple[int, int, int]] = collections.deque()  # (job id, start, end)

    def place(self, job_id: int, events: Sequence[Event]) -> list | None:
        """`events` with their bytes copied in, each as a (offset, length) reference; None if no room."""
        total = sum(len(data) for _, _, data in events if isinstance(data, bytes))
        start = self._room(total) if total else None
        if start is None:
            return None
        placed: list = []
        offset = start
        for time, code, data in events:
            if isinstance(data, bytes):
                self._map[offset:offset + len(data)] = data
                placed.append((time, code, (offset, len(data))))
                offset += len(data)
            else:
                placed.append((time, code, data))
        self._held.append((job_id, start, start + total))
        return placed

    def release(self, job_id: int) -> None:
        """The sealer has answered `job_id`: its region may be written again."""
        if self._held and self._held[0][0] == job_id:  # replies come in the order jobs were sent
            self._held.popleft()
            return
        for held in self._held:
            if held[0] == job_id:
                self._held.remove(held)
                return

    @property
    def held(self) -> int:
        """Bytes held by jobs in flight."""
        return sum(end - start for _, start, end in self._held)

    def close(self) -> None:
        self._held.clear()
        self._map.close()
        os.close(self.fd)

    def _room(self, size: int) -> int | None:
        """Where a region of `size` bytes starts, after the newest held one, never over an older one."""
        if size > self.size:
            return None
        if not self._held:
            return 0
        oldest, newest = self._held[0][1], self._held[-1][2]
        if self._held[-1][1] < oldest:  # wrapped: the newest regions lie before the oldest
            return newest if newest + size <= oldest else None
        if newest + size <= self.size:
            return newest
        return 0 if size <= oldest else None


class RingReader:
    """The sealer's side: the ring mapped read-only; references checked against its bounds."""

    def __init__(self, fd: int):
        self.size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)

    def resolve(self, events: Iterable) -> Iterator[Event]:
        """`events` with each (offset, length) reference replaced by the bytes it names.

        Lazily, so a bad reference raises inside the writer's append: the writer counts it as a failed
        write and refuses the jobs queued behind it (no gap in the recording).
        """
        for time, code, data in events:
            yield (time, code, self._read(data)) if isinstance(data, tuple) else (time, code, data)

    def _read(self, reference: tuple) -> bytes:
        if len(reference) != 2 or not all(type(value) is int for value in reference):
            raise ValueError("malformed ring reference")
        offset, length = reference
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("ring reference out of bounds")
        return self._map[offset:offset + length]


def resolve_without_ring(events: Iterable) -> Iterator[Event]:
    """A sealer started without a ring takes no references (lazily, as `RingReader.resolve`)."""
    for event in events:
        if isinstance(event[2], tuple):
            raise ValueError("ring reference without a ring")
        yield event
