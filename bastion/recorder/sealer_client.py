"""The gateway's side of the sealer process: starts it, sends write jobs, resolves each job's future."""

from __future__ import annotations

import asyncio
import logging
import marshal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from bastion.recorder.ring import PayloadRing
from bastion.recorder.sealer import LENGTH, MAX_MESSAGE, frame
from bastion.recorder.writer import Event, WriteState

log = logging.getLogger("bastion.recorder")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Room in the kernel for a few chunks each way, so a bulk session's job rarely waits for the socket.
SOCKET_BUFFER = 4 * 1024 * 1024
# Jobs one recording may have in flight. The sealer runs them in the order sent, and one waiting in the
# socket means the sealer need not wait for the event loop to send the next job after it answers one: with
# one job in flight, bulk output measured the relay paused behind the recorder half of the time while the
# sealer sat idle over half of it.
PIPELINE_DEPTH = 2


class SealerStopped(RuntimeError):
    """The sealer process is not running (any more): the recordings it held have failed."""


class _Channel(asyncio.Protocol):
    """Reads replies off the socket pair of one sealer generation and hands them to the client."""

    def __init__(self, client: "SealerProcess", generation: int):
        self._client = client
        self._generation = generation
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(self._buffer)
            if size > MAX_MESSAGE:
                self._client._broken("oversized reply")
                return
            end = LENGTH.size + size
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[LENGTH.size:end])
            del self._buffer[:end]
            self._client._reply(body)

    def connection_lost(self, exc: Exception | None) -> None:
        # Late for a sealer given up on (its queued bytes kept the socket open until it was killed):
        # breaking "the" sealer then would fail its successor and the session that started it.
        if self._generation == self._client._generation:
            self._client._broken("sealer process ended")


class SealerProcess:
    """One sealer process for this gateway; restarted for new recordings if it dies (the old ones fail)."""

    def __init__(self, keys_dir: Path, interval: Callable[[], float]):
        self._keys_dir = keys_dir
        self._interval = interval  # recording.flush_interval, read at use: the global policy may change it
        self._process: subprocess.Popen | None = None
        self._transport: asyncio.Transport | None = None
        self._ring: PayloadRing | None = None  # this generation's shared memory for output bytes
        self._generation = 0
        self._jobs: dict[int, tuple[asyncio.Future, str, str]] = {}  # job id: (future, op, recording id)
        self._next_job = 1
        self._ready: asyncio.Future | None = None
        self._starting: asyncio.Task | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._transport is not None and self._ready is not None and self._ready.done() \
            and not self._ready.cancelled() and self._ready.exception() is None

    async def start(self) -> None:
        """Start the process unless it runs; several callers share one start."""
        if self.running:
            return
        if self._stopping:
            raise SealerStopped("the recorder is stopping")
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        self._cleanup()
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for end in (ours, theirs):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            self._ring = _new_ring()
            ring = () if self._ring is None else (self._ring.fd,)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bastion.recorder.sealer", str(self._keys_dir), str(theirs.fileno()),
                 *map(str, ring)],
                pass_fds=(theirs.fileno(), *ring), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True)  # a Ctrl-C for the gateway is not for the sealer: it ends at EOF
        except BaseException:
            ours.close()
            self._close_ring()
            raise
        finally:
            theirs.close()
        self._generation += 1
        self._ready = loop.create_future()
        generation = self._generation
        self._transport, _ = await loop.create_unix_connection(lambda: _Channel(self, generation), sock=ours)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.shield(self._ready)
        except TimeoutError:
            self._broken("sealer process did not start")
            raise SealerStopped("the recording sealer did not start") from None
        except SealerStopped:
            self._broken("sealer process did not start")
            raise
        except BaseException:  # cancelled: no half-started sealer left behind
            self._broken("sealer start cancelled")
            raise
        if self._stopping:  # stop() came while this start was under way
            self._broken("the recorder is stopping")
            raise SealerStopped("the recorder is stopping")
        log.info("recording sealer process %s started", self._process.pid)

    async def open(self, recording_id: str, *, path: Path, identity: tuple[int, int], session_id: str,
                   data_key: bytes, preamble: bytes, header: bytes, chunk_bytes: int) -> "SealerWriter":
        """Hand a created file (preamble written; `identity` its st_dev and st_ino) to the sealer.

        Raises OSError or SealerStopped. If the caller gives up waiting, a late success is dropped again.
        """
        await self.start()
        generation = self._generation
        state = await self._submit(generation, "open", recording_id,
                                   (str(path), identity, session_id, data_key, preamble, header, chunk_bytes))
        return SealerWriter(self, generation, recording_id, state)

    def drop(self, recording_id: str, generation: int) -> None:
        """Close the recording in the sealer without sealing it (its file is being removed)."""
        if self.running and generation == self._generation:
            self._submit(generation, "drop", recording_id, ()).add_done_callback(_ignore)

    async def stop(self) -> None:
        """Close the channel (the sealer closes what is still open, unsealed) and wait for it to exit."""
        self._stopping = True
        process = self._process
        self._broken("the recorder is stopping")
        if process is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_TIMEOUT)
            except TimeoutError:
                log.error("recording sealer did not exit within %ss; killed", STOP_TIMEOUT)
                process.kill()
                await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_TIMEOUT)

    # -- inside -------------------------------------------------------------------------------

    def _submit(self, generation: int, op: str, recording_id: str, args: tuple) -> "asyncio.Future[WriteState]":
        if not self.running or generation != self._generation or self._transport is None:
            raise SealerStopped("recording writer stopped")
        job_id = self._next_job
        ring = self._ring
        try:
            if op in ("append", "finish") and ring is not None:
                placed = ring.place(job_id, args[0])  # None: no room, the bytes go inline
                if placed is not None:
                    args = (placed, *args[1:])
            message = frame((job_id, op, recording_id, args))
            if len(message[1]) > MAX_MESSAGE:  # the sealer would take it for garbage and stop
                raise SealerStopped("recording job too large")
        except BaseException:
            if ring is not None:
                ring.release(job_id)  # never sent: its region is free again
            raise
        self._next_job += 1
        future: asyncio.Future[WriteState] = asyncio.get_running_loop().create_future()
        self._jobs[job_id] = (future, op, recording_id)
        self._transport.writelines(message)
        return future

    def _reply(self, body: bytes) -> None:
        try:
            message = _parse_reply(body)
        except ValueError:
            self._broken("malformed reply")
            return
        job_id = message[0]
        if job_id == 0:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        if self._ring is not None:
            self._ring.release(job_id)  # answered: the sealer is done with its bytes
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        future, op, recording_id = job
        _, chunks, size, detail = message[:4]
        if future.done():  # the caller gave up (timeout, cancel); an open it no longer wants is closed again
            if op == "open" and chunks is not None and self.running:
                self._submit(self._generation, "drop", recording_id, ()).add_done_callback(_ignore)
            return
        if chunks is None:
            code, reason = message[2], message[3]
            future.set_exception(OSError(code, reason) if code is not None else RuntimeError(reason))
        else:
            future.set_result(WriteState(chunks, size, detail))

    def _broken(self, why: str) -> None:
        """Fail every job in flight; later jobs of these recordings raise SealerStopped."""
        if self._transport is not None:
            if not self._stopping:
                # Its recordings fail closed (their sessions end); new sessions start a new sealer.
                log.error("recording sealer: %s; %d write jobs in flight failed", why, len(self._jobs))
            self._transport.close()
            self._transport = None
        jobs, self._jobs = self._jobs, {}
        for future, _, _ in jobs.values():
            if not future.done():
                future.set_exception(SealerStopped("recording writer stopped"))
        self._close_ring()
        if self._process is not None:
            self._process.poll()  # reap it if it has exited (no zombie until the next start)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SealerStopped(why))
            self._ready.exception()  # retrieved: start() reports it

    def _close_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()  # the sealer's mapping, if it still runs, stays valid until it exits
            self._ring = None

    def _cleanup(self) -> None:
        self._close_ring()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            try:
                self._process.wait(timeout=1.0)  # killed: gone at once (this runs on the event loop)
            except subprocess.TimeoutExpired:
                pass
        self._process = None


def _new_ring() -> PayloadRing | None:
    """This generation's shared memory, or None (its jobs' bytes then all go through the socket)."""
    try:
        return PayloadRing()
    except OSError as exc:  # e.g. a kernel that refuses executable memfds (vm.memfd_noexec=2)
        log.warning("recording sealer: no shared memory (%s); job data goes through the socket",
                    exc.strerror or type(exc).__name__)
        return None


def _parse_reply(body: bytes) -> tuple:
    try:
        message = marshal.loads(body)
    except (EOFError, TypeError) as exc:
        raise ValueError("not a reply") from exc
    if not isinstance(message, tuple) or not message or not isinstance(message[0], int):
        raise ValueError("not a reply")
    if message[0] != 0 and len(message) != 4:
        raise ValueError("not a reply")
    return message


def _ignore(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class SealerWriter:
    """One recording held by the sealer process: each call sends one job and returns its future."""

    pipeline_depth = PIPELINE_DEPTH

    def __init__(self, process: SealerProcess, generation: int, recording_id: str, state: WriteState):
        self._process = process
        self.generation = generation
        self.recording_id = recording_id
        self._state = state

    @property
    def state(self) -> WriteState:
        return self._state

    def append(self, events: list[Event]) -> "asyncio.Future[WriteState]":
        return self._job("append", (events, float(self._process._interval())))

    def finish(self, events: list[Event], *, duration: float, end_reason: str,
               closed_at: str) -> "asyncio.Future[WriteState]":
        return self._job("finish", (events, duration, end_reason, closed_at))

    def abandon(self, *, duration: float, end_reason: str, closed_at: str) -> "asyncio.Future[WriteState]":
        return self._job("abandon", (duration, end_reason, closed_at))

    def _job(self, op: str, args: tuple[Any, ...]) -> "asyncio.Future[WriteState]":
        return self._process._submit(self.generation, op, self.recording_id, args)

