"""SFTP v3 packet filter: enforces read/write grants at the protocol level and reports transfers."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

FXP_INIT, FXP_VERSION = 1, 2
FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 3, 4, 5, 6
FXP_LSTAT, FXP_FSTAT, FXP_SETSTAT, FXP_FSETSTAT = 7, 8, 9, 10
FXP_OPENDIR, FXP_READDIR, FXP_REMOVE, FXP_MKDIR, FXP_RMDIR = 11, 12, 13, 14, 15
FXP_REALPATH, FXP_STAT, FXP_RENAME, FXP_READLINK, FXP_SYMLINK = 16, 17, 18, 19, 20
FXP_STATUS, FXP_HANDLE, FXP_DATA, FXP_NAME, FXP_ATTRS = 101, 102, 103, 104, 105
FXP_EXTENDED, FXP_EXTENDED_REPLY = 200, 201

FX_PERMISSION_DENIED, FX_BAD_MESSAGE, FX_OP_UNSUPPORTED = 3, 5, 8
PF_READ, PF_WRITE, PF_APPEND, PF_CREAT, PF_TRUNC = 0x1, 0x2, 0x4, 0x8, 0x10

# OpenSSH's sftp-server caps messages at 256 KiB; leave room, refuse anything beyond.
MAX_PACKET = 1024 * 1024
SFTP_VERSION = 3
MAX_PENDING = 4096
_U32 = struct.Struct(">I")

NEUTRAL = {FXP_CLOSE, FXP_LSTAT, FXP_FSTAT, FXP_OPENDIR, FXP_READDIR, FXP_REALPATH, FXP_STAT, FXP_READLINK}
WRITES = {FXP_WRITE, FXP_SETSTAT, FXP_FSETSTAT, FXP_REMOVE, FXP_MKDIR, FXP_RMDIR, FXP_RENAME, FXP_SYMLINK}
NEUTRAL_EXTENSIONS = {b"statvfs@openssh.com", b"fstatvfs@openssh.com", b"limits@openssh.com",
                      b"expand-path@openssh.com", b"home-directory", b"users-groups-by-id@openssh.com",
                      b"fsync@openssh.com"}
WRITE_EXTENSIONS = {b"posix-rename@openssh.com", b"hardlink@openssh.com", b"lsetstat@openssh.com",
                    b"copy-data"}


class SftpProtocolError(Exception):
    """The client sent something that is not SFTP; the channel is closed."""


@dataclass
class TransferState:
    path: str
    direction: str  # upload | download
    size: int = 0


@dataclass
class SftpFilter:
    """Sits on the byte stream of one sftp channel.

    `from_user` returns (bytes for the target, bytes answered locally to the user);
    `from_target` returns the bytes for the user. Completed transfers go to `on_transfer`
    and refused operations to `on_denied`. Whole packets only go on, so what stays pending is at most
    one packet (`_bodies` refuses a length over MAX_PACKET). After an SftpProtocolError the filter is
    done: the channel is closed.
    """

    may_read: bool
    may_write: bool
    on_transfer: Callable[[str, str, int], None]
    on_denied: Callable[[str, str], None]
    _up: bytearray = field(default_factory=bytearray)
    _down: bytearray = field(default_factory=bytearray)
    _opens: dict[int, TransferState] = field(default_factory=dict)
    _handles: dict[bytes, TransferState] = field(default_factory=dict)
    _reads: dict[int, bytes] = field(default_factory=dict)

    @staticmethod
    def _bodies(buf: bytes | bytearray) -> tuple[list[tuple[int, int]], int]:
        """(start, end) of each whole packet's body in `buf`, and the offset where the whole packets end."""
        bodies = []
        offset, size = 0, len(buf)
        while size - offset >= 5:
            (length,) = _U32.unpack_from(buf, offset)
            if length < 1 or length > MAX_PACKET:
                raise SftpProtocolError("bad sftp packet length")
            end = offset + 4 + length
            if end > size:
                break
            bodies.append((offset + 4, end))
            offset = end
        return bodies, offset

    @staticmethod
    def _source(pending: bytearray, data: bytes) -> bytes | bytearray:
        """The bytes to parse: `data` itself while nothing is pending (no copy), else the pending buffer."""
        if not pending:
            return data if type(data) is bytes else bytes(data)  # what goes on is always bytes of its own
        pending += data
        return pending

    @staticmethod
    def _release(pending: bytearray, source: bytes | bytearray, end: int) -> bytes:
        """The whole packets (`source` up to `end`) as bytes; the rest stays pending.

        Bulk sftp data passes as it came, or with one copy when a packet spans SSH packets (a 32 KiB read's
        reply always does): the filter reads headers only, and at 300 MiB/s every copy of the stream costs.
        """
        if source is pending:
            whole = bytes(memoryview(pending)[:end])  # the views die with the expression, before the resize
            del pending[:end]
            return whole
        if end < len(source):
            pending += memoryview(source)[end:]
            return source[:end]
        return source

    def from_user(self, data: bytes) -> tuple[bytes, bytes]:
        source = self._source(self._up, data)
        bodies, end = self._bodies(source)
        answer = bytearray()
        # (start, end) of each packet not forwarded as it came, and what goes instead
        changed: list[tuple[int, int, bytes]] = []
        for start, stop in bodies:
            kind = source[start]
            if kind == FXP_WRITE:  # the bulk of an upload: checked where it lies
                reply = self._check_write(source, start, stop)
            else:
                packet = bytes(source[start:stop])
                if kind == FXP_INIT:
                    # Pin SFTP version 3: later versions encode OPEN differently, and this filter speaks v3.
                    pinned = bytes([FXP_INIT]) + _U32.pack(SFTP_VERSION) + packet[5:]
                    changed.append((start - 4, stop, _U32.pack(len(pinned)) + pinned))
                reply = self._check_request(packet)
            if reply is not None:
                answer += reply
                changed.append((start - 4, stop, b""))
        forward = self._release(self._up, source, end)
        if changed:
            pieces, done = [], 0
            for start, stop, instead in changed:
                pieces += [forward[done:start], instead]
                done = stop
            pieces.append(forward[done:])
            forward = b"".join(pieces)
        return forward, bytes(answer)

    def from_target(self, data: bytes) -> bytes:
        source = self._source(self._down, data)
        bodies, end = self._bodies(source)
        for start, stop in bodies:
            self._track_response(source, start, stop)
        return self._release(self._down, source, end)

    def finish(self) -> None:
        """Report transfers still open when the channel ends."""
        for state in list(self._handles.values()):
            self._report(state)
        self._handles.clear()

    # requests --------------------------------------------------------------------------------------------

    def _check_request(self, packet: bytes) -> bytes | None:
        """Any request but WRITE (from_user checks that one where it lies, with `_check_write`)."""
        kind = packet[0]
        if kind == FXP_INIT:
            return None  # the version is pinned by from_user
        if len(packet) < 5:
            raise SftpProtocolError("short sftp request")
        (request_id,) = struct.unpack_from(">I", packet, 1)
        if kind == FXP_OPEN:
            return self._check_open(request_id, packet)
        if kind == FXP_READ:
            handle, _ = _string(packet, 5)
            if not self.may_read:
                return self._deny(request_id, "read", self._path_of(handle))
            self._remember(self._reads, request_id, handle)
            return None
        if kind == FXP_CLOSE:
            handle, _ = _string(packet, 5)
            state = self._handles.pop(handle, None)
            if state is not None:
                self._report(state)
            return None
        if kind in NEUTRAL:
            return None
        if kind in WRITES:
            if self.may_write:
                return None
            path, _ = _string(packet, 5) if kind not in (FXP_FSETSTAT,) else (b"", 0)
            return self._deny(request_id, _OP_NAMES.get(kind, "write"), path.decode("utf-8", "replace"))
        if kind == FXP_EXTENDED:
            name, _ = _string(packet, 5)
            if name in NEUTRAL_EXTENSIONS or (name in WRITE_EXTENSIONS and self.may_write):
                return None
            if name in WRITE_EXTENSIONS:
                return self._deny(request_id, name.decode("ascii", "replace"), "")
            return _status(request_id, FX_OP_UNSUPPORTED, "operation not supported by the bastion")
        return _status(request_id, FX_BAD_MESSAGE, "unknown request")

    def _check_write(self, buf: bytes | bytearray, start: int, end: int) -> bytes | None:
        """A WRITE request lying at buf[start:end]: its data is counted, not copied."""
        if end - start < 5:
            raise SftpProtocolError("short sftp request")
        (request_id,) = _U32.unpack_from(buf, start + 1)
        handle_start, handle_end = _string_span(buf, start + 5, end)
        handle = bytes(buf[handle_start:handle_end])
        if not self.may_write:
            return self._deny(request_id, "write", self._path_of(handle))
        data_start, data_end = _string_span(buf, handle_end + 8, end)
        state = self._handles.get(handle)
        if state is not None:
            state.size += data_end - data_start
        return None

    def _check_open(self, request_id: int, packet: bytes) -> bytes | None:
        path_bytes, offset = _string(packet, 5)
        if offset + 4 > len(packet):
            raise SftpProtocolError("short open request")
        (pflags,) = struct.unpack_from(">I", packet, offset)
        path = path_bytes.decode("utf-8", "replace")
        writes = bool(pflags & (PF_WRITE | PF_APPEND | PF_CREAT | PF_TRUNC))
        reads = bool(pflags & PF_READ)
        if writes and not self.may_write:
            return self._deny(request_id, "open for writing", path)
        if reads and not self.may_read:
            return self._deny(request_id, "open for reading", path)
        self._remember(self._opens, request_id, TransferState(path, "upload" if writes else "download"))
        return None

    def _deny(self, request_id: int, operation: str, path: str) -> bytes:
        self.on_denied(operation, path)
        return _status(request_id, FX_PERMISSION_DENIED, "Permission denied by bastion policy")

    def _path_of(self, handle: bytes) -> str:
        state = self._handles.get(handle)
        return state.path if state else ""

    @staticmethod
    def _remember(table: dict, key: int, value: object) -> None:
        if len(table) >= MAX_PENDING:
            raise SftpProtocolError("too many outstanding sftp requests")
        table[key] = value

    # responses -------------------------------------------------------------------------------------------

    def _track_response(self, buf: bytes | bytearray, start: int, end: int) -> None:
        """A response lying at buf[start:end]: read in place (a DATA reply's bytes are counted, not copied)."""
        if end - start < 5:
            raise SftpProtocolError("short sftp response")
        kind = buf[start]
        (value,) = _U32.unpack_from(buf, start + 1)
        if kind == FXP_VERSION:
            if value != SFTP_VERSION:
                raise SftpProtocolError("the target answered with another sftp version")
            return
        request_id = value
        if kind == FXP_HANDLE:
            handle_start, handle_end = _string_span(buf, start + 5, end)
            state = self._opens.pop(request_id, None)
            if state is not None:
                if len(self._handles) >= MAX_PENDING:
                    raise SftpProtocolError("too many open sftp handles")
                self._handles[bytes(buf[handle_start:handle_end])] = state
        elif kind == FXP_DATA:
            handle = self._reads.pop(request_id, None)
            data_start, data_end = _string_span(buf, start + 5, end)
            if handle is not None and handle in self._handles:
                self._handles[handle].size += data_end - data_start
        elif kind == FXP_STATUS:
            self._opens.pop(request_id, None)
            self._reads.pop(request_id, None)

    def _report(self, state: TransferState) -> None:
        self.on_transfer(state.direction, state.path, state.size)


_OP_NAMES = {FXP_SETSTAT: "setstat", FXP_FSETSTAT: "fsetstat", FXP_REMOVE: "remove", FXP_MKDIR: "mkdir",
             FXP_RMDIR: "rmdir", FXP_RENAME: "rename", FXP_SYMLINK: "symlink", FXP_WRITE: "write"}


def _string_span(buf: bytes | bytearray, offset: int, end: int) -> tuple[int, int]:
    """Where the SSH string at `offset` lies (its bytes, not its length), checked against `end`."""
    if offset + 4 > end:
        raise SftpProtocolError("truncated sftp string")
    (length,) = _U32.unpack_from(buf, offset)
    stop = offset + 4 + length
    if stop > end:
        raise SftpProtocolError("truncated sftp string")
    return offset + 4, stop


def _string(packet: bytes, offset: int) -> tuple[bytes, int]:
    start, stop = _string_span(packet, offset, len(packet))
    return packet[start:stop], stop


def _status(request_id: int, code: int, message: str) -> bytes:
    msg = message.encode()
    body = struct.pack(">BII", FXP_STATUS, request_id, code) + struct.pack(">I", len(msg)) + msg + \
        struct.pack(">I", 2) + b"en"
    return struct.pack(">I", len(body)) + body
