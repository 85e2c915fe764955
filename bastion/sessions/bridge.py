"""Pumps one channel between a front-end and a target, teeing every byte to the recorder."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine, Protocol

import asyncssh

from bastion.audit.events import Transfer, TransferDenied
from bastion.sessions.registry import LiveSession, SessionRegistry
from bastion.sessions.sftpfilter import SftpFilter, SftpProtocolError

log = logging.getLogger("bastion.bridge")
TYPEAHEAD_LIMIT = 1 << 20


class Downstream(Protocol):
    """What the bridge needs of the user's side of a channel (an SSH channel, a websocket...)."""

    def write(self, data: bytes) -> None: ...
    def write_stderr(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def exit(self, status: int) -> None: ...
    def exit_with_signal(self, signal: str, core_dumped: bool = False, msg: str = "", lang: str = "") -> None: ...
    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class _UpstreamSession(asyncssh.SSHClientSession):
    """Callbacks from the target's channel, handed to the bridge."""

    def __init__(self, bridge: "Bridge"):
        self._bridge = bridge

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._bridge.target_data(data, datatype)

    def eof_received(self) -> bool:
        self._bridge.target_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self._bridge.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._bridge.exit_signal = (signal, core_dumped, msg, lang)

    def connection_lost(self, exc: Exception | None) -> None:
        self._bridge.target_closed(exc)

    def pause_writing(self) -> None:
        self._bridge.downstream.pause_reading()

    def resume_writing(self) -> None:
        self._bridge.downstream.resume_reading()


class Bridge:
    """One channel: user <-> target, with recording, transfer accounting and termination."""

    def __init__(self, live: LiveSession, downstream: Downstream, registry: SessionRegistry, *,
                 sftp: SftpFilter | None = None, record_io: bool = True):
        self.live = live
        self.downstream = downstream
        self.registry = registry
        self.sftp = sftp
        self.record_io = record_io
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        self._chan: asyncssh.SSHClientChannel | None = None
        self._typeahead: list[tuple[bytes, Any]] = []
        self._typeahead_size = 0
        self._eof_pending = False
        self._paused_by: set[str] = set()
        self._finished = False
        self._tasks: set[asyncio.Task] = set()
        self.done = asyncio.get_running_loop().create_future()

    # setup -----------------------------------------------------------------------------------------------

    async def start(self, conn: asyncssh.SSHClientConnection, *, command: str | None = None,
                    subsystem: str | None = None, term_type: str | None = None,
                    term_size: tuple[int, int, int, int] | None = None, term_modes: dict | None = None,
                    env: dict[str, str] | None = None, window: int = 2 << 20, max_pktsize: int = 32768) -> None:
        chan, _ = await conn.create_session(
            lambda: _UpstreamSession(self), command=command, subsystem=subsystem, env=env or {}, send_env=(),
            term_type=term_type, term_size=term_size, term_modes=term_modes or {},
            request_pty=bool(term_type), encoding=None, window=window, max_pktsize=max_pktsize)
        self._chan = chan
        for data, datatype in self._typeahead:
            self._to_target(data, datatype)
        self._typeahead.clear()
        if self._eof_pending:
            chan.write_eof()
        if self._typeahead_size > TYPEAHEAD_LIMIT:
            self.downstream.resume_reading()
        self._typeahead_size = 0
        if self._finished:
            chan.close()

    # user -> target --------------------------------------------------------------------------------------

    def user_data(self, data: bytes, datatype: Any = None) -> None:
        if self._finished:
            return
        self.live.bytes_up += len(data)
        if self._chan is None:
            self._typeahead.append((data, datatype))
            self._typeahead_size += len(data)
            if self._typeahead_size > TYPEAHEAD_LIMIT:
                self.downstream.pause_reading()
            return
        self._to_target(data, datatype)

    def _to_target(self, data: bytes, datatype: Any) -> None:
        assert self._chan is not None
        if self.sftp is not None:
            try:
                forward, answer = self.sftp.from_user(data)
            except SftpProtocolError as exc:
                self.terminate(f"sftp protocol error: {exc}")
                return
            if answer:
                self.downstream.write(answer)
            if forward:
                self._chan.write(forward)
            return
        if self.record_io:
            self.live.recorder.input(data)
        self._chan.write(data, datatype)

    def user_eof(self) -> None:
        if self._chan is None:
            self._eof_pending = True
        elif not self._finished:
            self._chan.write_eof()

    def resize(self, width: int, height: int, pixwidth: int = 0, pixheight: int = 0) -> None:
        self.live.width, self.live.height = width, height
        if self.record_io:
            self.live.recorder.resize(width, height)
            if self.live.watchers:
                self.live.broadcast("r", f"{width}x{height}")
        if self._chan is not None and not self._finished:
            self._chan.change_terminal_size(width, height, pixwidth, pixheight)

    def signal(self, name: str) -> None:
        if self._chan is not None and not self._finished:
            self._chan.send_signal(name)

    def send_break(self, msec: int) -> None:
        if self._chan is not None and not self._finished:
            self._chan.send_break(msec)

    def user_gone(self, exc: Exception | None = None) -> None:
        """The user's side closed (disconnect, or we closed it)."""
        self._finish("client disconnected" if exc is None else "client connection lost")

    def downstream_paused(self) -> None:
        self._pause_target("downstream")

    def downstream_resumed(self) -> None:
        self._resume_target("downstream")

    # target -> user --------------------------------------------------------------------------------------

    def target_data(self, data: bytes, datatype: Any) -> None:
        if self._finished:
            return
        if self.sftp is not None:
            try:
                data = self.sftp.from_target(data)
            except SftpProtocolError:
                self.terminate("the target sent malformed sftp data")
                return
        self.live.bytes_down += len(data)
        if self.record_io:
            recorder = self.live.recorder
            recorder.output(data)
            if self.live.watchers:
                self.live.broadcast("o", data)
            if recorder.backlogged and "recorder" not in self._paused_by:
                self._pause_target("recorder")
                recorder.on_drained(lambda: self._resume_target("recorder"))
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.downstream.write_stderr(data)
        else:
            self.downstream.write(data)

    def target_eof(self) -> None:
        if not self._finished:
            self.downstream.write_eof()

    def target_closed(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self.live.exit_status = self.exit_status
        if self.exit_signal is not None:
            signal, core, msg, lang = self.exit_signal
            self.downstream.exit_with_signal(signal, core, msg, lang or "en-US")
            reason = f"target process killed by signal {signal}"
        elif self.exit_status is not None:
            self.downstream.exit(self.exit_status)
            reason = "exited"
        else:
            self.downstream.close()
            reason = "target closed the channel" if exc is None else "target connection lost"
        self._finish(reason)

    def _pause_target(self, why: str) -> None:
        if not self._paused_by and self._chan is not None:
            self._chan.pause_reading()
        self._paused_by.add(why)

    def _resume_target(self, why: str) -> None:
        self._paused_by.discard(why)
        if not self._paused_by and self._chan is not None and not self._finished:
            self._chan.resume_reading()

    # accounting and ending -------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def transfer(self, protocol: str, direction: str, path: str, size: int) -> None:
        identity = self.live.identity
        if self.record_io or self.sftp is not None:
            self.live.recorder.marker(f"{protocol} {direction} {path} {size} bytes")
        self.spawn(self.registry.audit.emit(Transfer(
            actor=identity.name, source=identity.source_addr, target=self.live.target, session_id=self.live.id,
            protocol=protocol, direction=direction, path=path[:1024], size=size)))

    def transfer_denied(self, protocol: str, operation: str, path: str) -> None:
        identity = self.live.identity
        self.live.recorder.marker(f"{protocol} denied {operation} {path}")
        self.spawn(self.registry.audit.emit(TransferDenied(
            actor=identity.name, source=identity.source_addr, target=self.live.target, session_id=self.live.id,
            protocol=protocol, operation=operation, path=path[:1024])))

    def terminate(self, reason: str) -> None:
        """End the channel from the bastion's side and tell the user why."""
        if self._finished:
            return
        self.live.end_reason = self.live.end_reason or reason
        if self.sftp is None:
            self.downstream.write_stderr(f"\r\nbastion: session ended: {reason}\r\n".encode())
        self.downstream.exit(255)
        if self._chan is not None:
            self._chan.close()
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self.sftp is not None:
            self.sftp.finish()
        if self._chan is not None:
            self._chan.close()
        self.spawn(self._end(reason))

    async def _end(self, reason: str) -> None:
        try:
            pending = [t for t in self._tasks if t is not asyncio.current_task()]
            if pending:
                await asyncio.wait(pending, timeout=10)
            await self.registry.end(self.live, reason)
        finally:
            if not self.done.done():
                self.done.set_result(reason)
