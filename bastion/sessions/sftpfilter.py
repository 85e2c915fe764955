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
    and refused operations to `on_denied`.
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
    def _packets(buf: bytearray) -> list[bytes]:
        packets = []
        offset = 0
        while len(buf) - offset >= 5:
            (length,) = struct.unpack_from(">I", buf, offset)
            if length < 1 or length > MAX_PACKET:
                raise SftpProtocolError("bad sftp packet length")
            if len(buf) - offset - 4 < length:
                break
            packets.append(bytes(buf[offset + 4:offset + 4 + length]))
            offset += 4 + length
        del buf[:offset]
        return packets

    def from_user(self, data: bytes) -> tuple[bytes, bytes]:
        self._up += data
        forward, answer = bytearray(), bytearray()
        for packet in self._packets(self._up):
            if packet[0] == FXP_INIT:
                # Pin SFTP version 3: later versions encode OPEN differently, and this filter speaks v3.
                packet = bytes([FXP_INIT]) + struct.pack(">I", SFTP_VERSION) + packet[5:]
            reply = self._check_request(packet)
            if reply is None:
                forward += struct.pack(">I", len(packet)) + packet
            else:
                answer += reply
        if len(self._up) > MAX_PACKET + 4:
            raise SftpProtocolError("sftp packet too large")
        return bytes(forward), bytes(answer)

    def from_target(self, data: bytes) -> bytes:
        self._down += data
        out = bytearray()
        for packet in self._packets(self._down):
            self._track_response(packet)
            out += struct.pack(">I", len(packet)) + packet
        return bytes(out)

    def finish(self) -> None:
        """Report transfers still open when the channel ends."""
        for state in list(self._handles.values()):
            self._report(state)
        self._handles.clear()

    # requests --------------------------------------------------------------------------------------------

    def _check_request(self, packet: bytes) -> bytes | None:
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
        if kind == FXP_WRITE:
            handle, offset = _string(packet, 5)
            if not self.may_write:
                return self._deny(request_id, "write", self._path_of(handle))
            data, _ = _string(packet, offset + 8)
            state = self._handles.get(handle)
            if state is not None:
                state.size += len(data)
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

    def _track_response(self, packet: bytes) -> None:
        kind = packet[0]
        if len(packet) < 5:
            raise SftpProtocolError("short sftp response")
        if kind == FXP_VERSION:
            (version,) = struct.unpack_from(">I", packet, 1)
            if version != SFTP_VERSION:
                raise SftpProtocolError("the target answered with another sftp version")
            return
        (request_id,) = struct.unpack_from(">I", packet, 1)
        if kind == FXP_HANDLE:
            handle, _ = _string(packet, 5)
            state = self._opens.pop(request_id, None)
            if state is not None:
                if len(self._handles) >= MAX_PENDING:
                    raise SftpProtocolError("too many open sftp handles")
                self._handles[handle] = state
        elif kind == FXP_DATA:
            handle = self._reads.pop(request_id, None)
            data, _ = _string(packet, 5)
            if handle is not None and handle in self._handles:
                self._handles[handle].size += len(data)
        elif kind == FXP_STATUS:
            self._opens.pop(request_id, None)
            self._reads.pop(request_id, None)

    def _report(self, state: TransferState) -> None:
        self.on_transfer(state.direction, state.path, state.size)


_OP_NAMES = {FXP_SETSTAT: "setstat", FXP_FSETSTAT: "fsetstat", FXP_REMOVE: "remove", FXP_MKDIR: "mkdir",
             FXP_RMDIR: "rmdir", FXP_RENAME: "rename", FXP_SYMLINK: "symlink", FXP_WRITE: "write"}


def _string(packet: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(packet):
        raise SftpProtocolError("truncated sftp string")
    (length,) = struct.unpack_from(">I", packet, offset)
    end = offset + 4 + length
    if end > len(packet):
        raise SftpProtocolError("truncated sftp string")
    return packet[offset + 4:end], end


def _status(request_id: int, code: int, message: str) -> bytes:
    msg = message.encode()
    body = struct.pack(">BII", FXP_STATUS, request_id, code) + struct.pack(">I", len(msg)) + msg + \
        struct.pack(">I", 2) + b"en"
    return struct.pack(">I", len(body)) + body
