"""The recording sealer process (`python -m bastion.recorder.sealer KEYS_DIR FD [RING_FD]`): seals and writes chunks.

Turning terminal output into asciicast lines, compressing, encrypting, hashing and writing it costs more
CPU than relaying it. Done in threads of the gateway it competes with the relay for the interpreter lock;
here it runs on another core. The gateway (`sealer_client`) sends jobs over a socket pair; each job runs
to completion, in order, and gets one reply. Nothing of a session's content is ever logged.

Wire format, both ways: u32 length | marshal of a tuple (marshal builds only plain values, never objects).
  request: (job_id, op, recording_id, args)      op: open | append | finish | abandon | drop
           open's args: (path, (st_dev, st_ino), session_id, data_key, preamble, header, chunk_bytes)
           an event's bytes may be an (offset, length) reference into the shared ring (`ring`, RING_FD)
  reply:   (job_id, chunks, size, last_hash) on success, (job_id, None, errno or None, reason) on failure
  first message from the sealer: (0, "ready")
"""

from __future__ import annotations

import errno
import logging
import marshal
import os
import signal
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

from bastion.keys import load_node_key
from bastion.memtuning import tune_process
from bastion.recorder.ring import RingReader, resolve_without_ring
from bastion.recorder.writer import ChunkWriter, GroupSync, WriteState

log = logging.getLogger("bastion.recorder.sealer")

LENGTH = struct.Struct(">I")
# A job carries at most a backlog of raw output (sink.BACKLOG_BYTES or a few chunks) plus framing.
MAX_MESSAGE = 64 * 1024 * 1024


def frame(value: Any) -> list[bytes]:
    body = marshal.dumps(value)
    return [LENGTH.pack(len(body)), body]


def read_message(stream: BinaryIO) -> Any:
    """The next message, or None at a clean end of the stream; ValueError for anything malformed."""
    head = stream.read(LENGTH.size)
    if not head:
        return None
    if len(head) != LENGTH.size:
        raise ValueError("stream ends inside a length")
    (size,) = LENGTH.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError("message too long")
    body = stream.read(size)
    if len(body) != size:
        raise ValueError("stream ends inside a message")
    return marshal.loads(body)


class Sealer:
    """The open recordings of one gateway, keyed by recording id."""

    def __init__(self, keys_dir: Path, ring: RingReader | None = None):
        self._node_key = load_node_key(keys_dir)
        self._resolve = ring.resolve if ring is not None else resolve_without_ring
        self._interval = 1.0  # recording.flush_interval, sent with every append (the policy may change it)
        self._group_sync = GroupSync(lambda: self._interval, background=True)
        self._writers: dict[str, ChunkWriter] = {}

    def handle(self, op: str, recording_id: str, args: tuple) -> WriteState:
        if op == "open":
            return self._open(recording_id, *args)
        writer = self._writers.get(recording_id)
        if writer is None:
            raise OSError(errno.EBADF, "recording is not open in the sealer")
        if op == "append":
            events, self._interval = args
            return writer.append(self._resolve(events))
        if op == "finish":
            events, duration, end_reason, closed_at = args
            state = writer.finish(self._resolve(events), duration=duration, end_reason=end_reason,
                                  closed_at=closed_at)
            del self._writers[recording_id]  # only once sealed: after a failure, abandon still needs it
            return state
        if op in ("abandon", "drop"):
            try:
                if op == "drop":
                    writer.close_file()
                    return writer.state
                duration, end_reason, closed_at = args
                return writer.abandon(duration=duration, end_reason=end_reason, closed_at=closed_at)
            finally:
                del self._writers[recording_id]
        raise ValueError("unknown operation")

    def _open(self, recording_id: str, path: str, identity: tuple[int, int], session_id: str, data_key: bytes,
              preamble: bytes, header: bytes, chunk_bytes: int) -> WriteState:
        if recording_id in self._writers:
            raise OSError(errno.EEXIST, "recording is already open in the sealer")
        # Non-blocking, so a FIFO put in its place cannot hang the sealer; never through a final symlink.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            # Exactly the file the gateway created (device and inode), holding just the preamble it wrote.
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or (status.st_dev, status.st_ino) != tuple(identity) \
                    or os.lseek(fd, 0, os.SEEK_END) != len(preamble):
                raise OSError(errno.EIO, "recording file is not as created")
            os.set_blocking(fd, True)
            writer = ChunkWriter(fd, session_id, data_key, preamble, header, chunk_bytes, self._node_key,
                                 group_sync=self._group_sync)
        except BaseException:
            os.close(fd)
            raise
        self._writers[recording_id] = writer
        return writer.state

    def close_all(self) -> None:
        """The gateway is gone: close the files unsealed (its next start marks them truncated)."""
        for writer in self._writers.values():
            writer.close_file()
        self._writers.clear()


def serve(sealer: Sealer, channel: socket.socket) -> None:
    stream = channel.makefile("rb", buffering=1 << 20)
    channel.sendall(b"".join(frame((0, "ready"))))
    while (message := read_message(stream)) is not None:
        job_id, op, recording_id, args = message
        try:
            state = sealer.handle(op, recording_id, args)
            reply = (job_id, state.chunks, state.size, state.last_hash)
        except OSError as exc:
            reply = (job_id, None, exc.errno, exc.strerror or type(exc).__name__)
        except Exception as exc:  # a bug: report its kind, never its message (it may quote data)
            log.error("sealer job %s failed: %s", op, type(exc).__name__)
            reply = (job_id, None, None, type(exc).__name__)
        channel.sendall(b"".join(frame(reply)))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m bastion.recorder.sealer KEYS_DIR FD [RING_FD]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A stop signal meant for the gateway (Ctrl-C, systemd's SIGTERM to the whole unit) must not end the
    # sealer before the gateway has sealed its sessions; the sealer ends when the gateway closes the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = socket.socket(fileno=int(argv[1]))
    channel.setblocking(True)
    ring = None
    if len(argv) == 3:
        ring_fd = int(argv[2])
        ring = RingReader(ring_fd)
        os.close(ring_fd)  # the mapping stays
    sealer = Sealer(Path(argv[0]), ring)
    tune_process()
    try:
        serve(sealer, channel)
    except (ValueError, EOFError, TypeError) as exc:
        log.error("sealer stopped: malformed request (%s)", type(exc).__name__)
        return 1
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway went away
    finally:
        sealer.close_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
