"""Where recordings live: creates container files and their index rows, repairs rows after a crash."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.clock import Clock
from bastion.config import Config
from bastion.errors import RecordingError
from bastion.recorder import container
from bastion.recorder.jobs import RecordingWriter, ThreadedWriter
from bastion.recorder.reader import verify
from bastion.recorder.sealer_client import SealerProcess, SealerWriter
from bastion.recorder.sink import DB_TIMEOUT, IO_TIMEOUT, SessionRecorder, describe_exception, failure_reason
from bastion.recorder.writer import ChunkWriter, GroupSync, header_line
from bastion.store.models import Recording, Session
from bastion.vault import Vault
from bastion.privatefiles import fsync_dir

log = logging.getLogger("bastion.recorder")

WORKERS = 8
DEFAULT_SIZE = (80, 24)
MAX_DIMENSION = 10_000


def recording_path(recordings_dir: Path, session_id: str, when: dt.datetime) -> Path:
    when = when.astimezone(dt.timezone.utc)
    return recordings_dir / f"{when:%Y}" / f"{when:%m}" / f"{when:%d}" / (session_id + container.SUFFIX)


def _make_private_dirs(root: Path, leaf: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # makedirs applies `mode` to the last level only; create each level so all are 0700.
    current = root
    for part in leaf.relative_to(root).parts:
        current = current / part
        try:
            os.mkdir(current, 0o700)
        except FileExistsError:
            pass


class _RecordingExists(Exception):
    """The session already has a recording file (O_EXCL refused to create another)."""


def _create_file(root: Path, path: Path, preamble: bytes) -> int:
    """Create the file (never over an existing one), write the preamble durably, return the fd."""
    _make_private_dirs(root, path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise _RecordingExists() from None
    try:
        view = memoryview(preamble)
        while view:
            view = view[os.write(fd, view):]
        os.fdatasync(fd)
        # The new directory entry must survive a crash too, or the file vanishes with it.
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def _discard_file(fd: int, path: Path) -> None:
    """Close `fd` (unless -1: already handed on) and remove the file."""
    try:
        if fd >= 0:
            os.close(fd)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _terminal_size(width: Any, height: Any) -> tuple[int, int]:
    # The size comes from the client; a nonsense value must not refuse the session.
    try:
        width, height = int(width), int(height)
    except (TypeError, ValueError):
        return DEFAULT_SIZE
    if width <= 0 or height <= 0:
        return DEFAULT_SIZE
    return min(width, MAX_DIMENSION), min(height, MAX_DIMENSION)


class RecordingStore:
    """Opens a SessionRecorder per session; its chunks are sealed by the sealer process when one is given
    (the gateway), else by worker threads of this process."""

    def __init__(self, config: Config, vault: Vault, node_key: Ed25519PrivateKey,
                 sessionmaker: async_sessionmaker, clock: Clock, executor: Executor | None = None,
                 sealer: SealerProcess | None = None):
        self._config = config
        self._vault = vault
        self._node_key = node_key
        self._sessionmaker = sessionmaker
        self._clock = clock
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="bastion-recorder")
        self._live: dict[str, SessionRecorder] = {}
        self._group_sync = GroupSync(lambda: config["recording.flush_interval"])
        self._sealer = sealer
        self._stopping = False

    @property
    def recordings_dir(self) -> Path:
        return self._config.recordings_dir

    async def open(self, session_id: str, *, width: int, height: int, term: str, title: str,
                   echo_tracking: bool, on_failure: Callable[[str], None]) -> SessionRecorder:
        """Create the recording of a session and its index row (status "open").

        Raises RecordingError with a safe message when anything fails; the caller then refuses
        the session (fail closed).  The Session row must already exist (foreign key).
        """
        if not isinstance(session_id, str) or not container.SESSION_ID.fullmatch(session_id):
            raise RecordingError("recording could not be started: invalid session id")
        width, height = _terminal_size(width, height)
        now = self._clock.now()
        data_key = os.urandom(32)
        try:
            wrapped = self._vault.wrap_key(data_key, context=container.key_context(session_id))
        except Exception as exc:
            log.error("recording of session %s: data key not wrapped (%s)", session_id, describe_exception(exc))
            raise RecordingError("recording could not be started: the vault is unavailable") from None
        preamble = container.encode_preamble(session_id, now.isoformat(), self._config.node_name, wrapped)
        path = recording_path(self.recordings_dir, session_id, now)
        fd = await self._create(path, preamble, session_id)
        recording_id = str(uuid.uuid4())
        header = header_line(width, height, int(now.timestamp()), str(term), str(title))
        try:
            writer = await self._writer(recording_id, fd, path, session_id, data_key, preamble, header)
        except BaseException as exc:
            _discard_file(fd, path)
            if not isinstance(exc, Exception):
                raise
            log.error("recording of session %s: sealer refused it (%s)", session_id, describe_exception(exc))
            reason = "the recorder is stopping" if self._stopping else "the recorder is unavailable"
            raise RecordingError(f"recording could not be started: {reason}") from None
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                async with self._sessionmaker() as db, db.begin():
                    db.add(Recording(id=recording_id, session_id=session_id, path=str(path), status="open",
                                     chunks=0, size=len(preamble), last_hash="", created_at=now))
        except BaseException as exc:
            # Quick syscalls, done inline so a cancelled open() leaves no orphan file either.
            self._release(writer)
            _discard_file(-1, path)
            if not isinstance(exc, Exception):
                raise
            log.error("recording of session %s: index row not created (%s)", session_id, describe_exception(exc))
            raise RecordingError("recording could not be started: the recording index is unavailable") from None
        recorder = SessionRecorder(
            recording_id=recording_id, session_id=session_id, path=path, writer=writer,
            clock=self._clock, config=self._config, echo_tracking=echo_tracking,
            on_failure=on_failure, update_row=lambda **values: self._update_row(recording_id, **values),
            on_closed=self._forget)
        self._live[recording_id] = recorder
        log.info("recording %s of session %s started", recording_id, session_id)
        return recorder

    async def seal_abandoned(self) -> int:
        """Close the index rows of this node's recordings left "open" by a crash; return how many.

        Each file is verified (offline): a complete signed file is "sealed", one sealed after a
        write failure is "failed", anything else "truncated" (valid up to its last whole chunk).
        """
        async with asyncio.timeout(DB_TIMEOUT):
            async with self._sessionmaker() as db:
                rows = (await db.execute(
                    select(Recording.id, Recording.path)
                    .join(Session, Session.id == Recording.session_id)
                    .where(Recording.status == "open", Session.node == self._config.node_name)
                )).all()
        public_key = self._node_key.public_key()
        count = 0
        for recording_id, path in rows:
            if recording_id in self._live:
                continue
            try:
                report = await self._run(verify, path, public_key)
                status = {"sealed": "sealed", "failed": "failed"}.get(report.status, "truncated")
                values = dict(status=status, chunks=report.chunks, size=report.size, last_hash=report.last_hash)
            except RecordingError as exc:
                log.warning("recording %s: %s", recording_id, exc.safe_message)
                values = dict(status="failed")
            await self._update_row(recording_id, closed_at=self._clock.now(), **values)
            log.info("recording %s left open by a crash is now %s", recording_id, values["status"])
            count += 1
        return count

    async def start(self) -> None:
        """Start the sealer process now, so the first session does not wait for it."""
        if self._sealer is not None:
            await self._sealer.start()

    async def stop(self) -> None:
        """Stop the sealer process (after every recorder is closed; what is still open stays unsealed)."""
        self._stopping = True
        if self._sealer is not None:
            await self._sealer.stop()

    def shutdown(self) -> None:
        """Stop the worker threads this store created (after every recorder is closed)."""
        self._stopping = True
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    async def _writer(self, recording_id: str, fd: int, path: Path, session_id: str, data_key: bytes,
                      preamble: bytes, header: bytes) -> RecordingWriter:
        chunk_bytes = self._config["recording.chunk_bytes"]
        if self._sealer is None:
            return ThreadedWriter(ChunkWriter(fd, session_id, data_key, preamble, header, chunk_bytes,
                                              self._node_key, group_sync=self._group_sync), self._executor)
        created = os.fstat(fd)
        async with asyncio.timeout(IO_TIMEOUT):
            writer = await self._sealer.open(recording_id, path=path, identity=(created.st_dev, created.st_ino),
                                             session_id=session_id, data_key=data_key, preamble=preamble,
                                             header=header, chunk_bytes=chunk_bytes)
        os.close(fd)  # the sealer holds its own descriptor now
        return writer

    def _release(self, writer: RecordingWriter) -> None:
        if isinstance(writer, ThreadedWriter):
            writer.chunk.close_file()
        elif isinstance(writer, SealerWriter) and self._sealer is not None:
            self._sealer.drop(writer.recording_id, writer.generation)

    async def _create(self, path: Path, preamble: bytes, session_id: str) -> int:
        try:
            job = asyncio.get_running_loop().run_in_executor(
                self._executor, _create_file, self.recordings_dir, path, preamble)
        except RuntimeError:  # the store is shutting down
            raise RecordingError("recording could not be started: the recorder is stopping") from None
        try:
            async with asyncio.timeout(IO_TIMEOUT):
                return await asyncio.shield(job)
        except _RecordingExists:
            raise RecordingError("recording could not be started: a recording of this session exists") from None
        except BaseException as exc:
            if not job.done():
                # Timed out or cancelled while the worker still runs: if the file appears after
                # all, close and remove it rather than leave an orphan.
                job.add_done_callback(lambda done: None if done.cancelled() or done.exception()
                                      else _discard_file(done.result(), path))
            if isinstance(exc, TimeoutError) and not job.done():
                raise RecordingError("recording could not be started: recording storage is not responding") from None
            if isinstance(exc, OSError):
                log.error("recording of session %s: file not created (%s)", session_id, describe_exception(exc))
                reason = failure_reason(exc, default="recording storage unavailable")
                raise RecordingError(f"recording could not be started: {reason}") from None
            raise

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        job = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        async with asyncio.timeout(IO_TIMEOUT * 10):  # verifying reads the whole file
            return await asyncio.shield(job)

    async def _update_row(self, recording_id: str, **values: Any) -> None:
        async with asyncio.timeout(DB_TIMEOUT):
            async with self._sessionmaker() as db, db.begin():
                await db.execute(update(Recording).where(Recording.id == recording_id).values(**values))

    def _forget(self, recording_id: str) -> None:
        self._live.pop(recording_id, None)
