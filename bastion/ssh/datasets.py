"""The `datasets` login: a virtual, read-only SFTP server of the published datasets a user may download now."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator

import asyncssh
from asyncssh.stream import SSHServerStreamSession

from bastion.admin import DATASETS_LOGIN
from bastion.audit.events import DeviceAdvisory, SessionDenied, Transfer, TransferDenied
from bastion.errors import RecordingError, UsageError
from bastion.policy import AllowDataset, DatasetAuthorization, StepUp
from bastion.publish import access
from bastion.publish.catalog import check_dataset_name
from bastion.publish.errors import BlobError, Refused
from bastion.publish.paths import check_relpath
from bastion.ssh.virtualpath import render, resolve

if TYPE_CHECKING:
    from bastion.auth.identity import Identity
    from bastion.sessions.registry import LiveSession
    from bastion.ssh.server import GatewayServer

log = logging.getLogger("bastion.ssh")

__all__ = ["DATASETS_LOGIN", "DatasetsSession", "DatasetsSFTPServer", "login_level"]

ONLY_SFTP = ("bastion: this login serves only SFTP downloads of published datasets: "
             "sftp -P PORT 'USER#datasets@HOST' (shell, commands, legacy scp -O and forwarding are refused)")
# One message for everything the user may not reach, whatever the reason (and for what never existed).
NO_SUCH_FILE = "No such file"
READ_ONLY = "Permission denied: this login is read-only"
AUTH_SETTLE_TIMEOUT = 30.0
MAX_OPEN_FILES = 32
MAX_READ = 256 * 1024
DIR_MODE = 0o040555
FILE_MODE = 0o100444


async def login_level(services: Any, identity: "Identity | None", reachable: Any) -> int:
    """The level the `datasets` login demands: the highest any download-granted dataset needs, as far as
    this user can reach it over SSH (`reachable(level)`); datasets above that are simply not listed."""
    wanted = services.config["auth.default_min_level"]
    if identity is None:
        return wanted
    for item in await services.policy.granted_datasets(identity, services.clock.now()):
        if isinstance(item.download, StepUp) and item.download.level > wanted and reachable(item.download.level):
            wanted = item.download.level
    return wanted


def _attrs(size: int | None = None) -> asyncssh.SFTPAttrs:
    if size is None:
        return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_DIRECTORY, permissions=DIR_MODE, uid=0, gid=0,
                                  nlink=2, size=0)
    return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR, permissions=FILE_MODE, uid=0, gid=0, nlink=1,
                              size=size)


def _longname(name: bytes, attrs: asyncssh.SFTPAttrs) -> bytes:
    kind = "d" if attrs.permissions == DIR_MODE else "-"
    perms = "r-xr-xr-x" if kind == "d" else "r--r--r--"
    return f"{kind}{perms} {attrs.nlink or 1:>3} bastion  bastion  {attrs.size or 0:>12} ".encode() + name


def _shown(path: bytes) -> str:
    """A requested path fit for the audit log: bounded, printable (PostgreSQL refuses NUL in JSON text)."""
    text = path[:255].decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else "?" for c in text)


@dataclass(frozen=True)
class _Dataset:
    authorization: DatasetAuthorization
    files: dict[str, int]  # path -> size


class _OpenFile:
    """An open download: the counted, audited stream and what has been served of it."""

    def __init__(self, stream: access.DownloadStream, dataset: str, path: str, size: int):
        self.stream, self.dataset, self.path, self.size = stream, dataset, path, size
        self.served = 0
        self.closed = False

    def seek(self, offset: int, whence: int) -> int:
        """For asyncssh's ranges extension: the file has no holes."""
        if offset >= self.size:
            raise OSError(errno.ENXIO, "past the end")
        return offset if whence == getattr(os, "SEEK_DATA", 3) else self.size


class DatasetsSFTPServer(asyncssh.SFTPServer):
    """Every SFTPServer method is overridden: reads of granted files are served, everything else refused.

    Its session is a live session like any other (`begin`): a row `bastion sessions list` shows and `kill` ends,
    a recording with a marker per file served or refused, the idle timeout and the re-check of the user.
    """

    def __init__(self, chan: asyncssh.SSHServerChannel, gateway: "GatewayServer", identity: "Identity"):
        super().__init__(chan)
        self.gateway = gateway
        self.services = gateway.services
        self.identity = identity
        self.live: "LiveSession | None" = None
        self.open_files: set[_OpenFile] = set()
        self._ended = False

    # the session -----------------------------------------------------------------------------------------

    async def begin(self) -> None:
        """Open the live session (row, recording, session.start); raises RecordingError when it cannot be
        recorded (the caller refuses the channel: nothing is served unrecorded)."""
        self.live = await self.services.sessions.begin_datasets(
            self.identity, connection_id=self.gateway.connection_id, terminate_cb=self._terminate)
        if self.gateway.device_policy == "advisory" and self.identity.device_id is None:
            await self.services.audit.emit(DeviceAdvisory(**self._common(), mac=self.gateway.flow.peer_mac or ""))

    def _terminate(self, reason: str) -> None:
        """Killed by an auditor, revoked, idle or unrecordable: end the channel now (exit() then closes up)."""
        if self.live is not None:
            self.live.exit_status = 255
        try:
            self.channel.exit(255)
        except OSError:
            pass
        self.channel.close()

    # audit -----------------------------------------------------------------------------------------------

    def _common(self) -> dict[str, str]:
        return {"actor": self.identity.name, "source": self.identity.source_addr or "", "target": DATASETS_LOGIN,
                "session_id": self.live.id if self.live is not None else ""}

    async def _denied(self, operation: str, path: bytes = b"") -> None:
        if self.live is not None:
            self.live.recorder.marker(f"sftp denied {operation} {_shown(path)}")
        await self.services.audit.emit(TransferDenied(**self._common(), protocol="sftp", operation=operation,
                                                      path=_shown(path)))

    async def _refuse_write(self, operation: str, path: bytes = b"") -> None:
        await self._denied(operation, path)
        raise asyncssh.SFTPPermissionDenied(READ_ONLY)

    # the virtual tree ------------------------------------------------------------------------------------

    async def _dataset(self, name: str, path: str | None = None) -> _Dataset | None:
        """The dataset if the policy lets this identity download it (or its file `path`) now (a fresh
        decision), else None."""
        try:
            check_dataset_name(name)
        except UsageError:
            return None
        decision = await self.services.policy.authorize_dataset(self.identity, name, "download",
                                                                self.services.clock.now(), path)
        if not isinstance(decision, AllowDataset) or decision.authorization.mask != "none":
            return None
        try:
            files = await access.files(self.services, decision.authorization)
        except Refused:
            return None
        return _Dataset(decision.authorization, {f.path: f.size for f in files})

    async def _lookup(self, path: bytes) -> tuple[tuple[str, ...], _Dataset | None, str | None]:
        """(components, dataset, file path inside it): a directory when the file path is None.

        Raises "No such file" for anything not in the granted set, the same way for every reason."""
        if self.live is not None:  # any request is activity for the idle timeout, not only bytes served
            self.live.active_at = self.services.clock.monotonic()
        parts = resolve(path)
        if parts is None:
            raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)
        if not parts:
            return parts, None, None
        dataset = await self._dataset(parts[0])
        if dataset is None:
            raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)
        if len(parts) == 1:
            return parts, dataset, None
        rel = "/".join(parts[1:])
        try:
            check_relpath(rel)
        except ValueError:
            raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE) from None
        if rel in dataset.files:
            return parts, dataset, rel
        if any(p.startswith(rel + "/") for p in dataset.files):
            return parts, dataset, None
        raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)

    async def _entries(self, parts: tuple[str, ...], dataset: _Dataset | None) -> list[tuple[str, int | None]]:
        if not parts:
            now = self.services.clock.now()
            items = await self.services.policy.granted_datasets(self.identity, now)
            return [(i.name, None) for i in items
                    if isinstance(i.download, AllowDataset) and i.download.authorization.mask == "none"]
        assert dataset is not None
        prefix = "/".join(parts[1:])
        prefix = prefix + "/" if prefix else ""
        children: dict[str, int | None] = {}
        for path, size in dataset.files.items():
            if path.startswith(prefix):
                head, sep, _ = path[len(prefix):].partition("/")
                children[head] = None if sep else size
        return sorted(children.items())

    # reading ---------------------------------------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        # Purely lexical: it says nothing about what exists, so it cannot leak the catalog.
        parts = resolve(path)
        if parts is None:
            raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)
        return render(parts)

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        _, dataset, rel = await self._lookup(path)
        return _attrs(dataset.files[rel] if dataset is not None and rel is not None else None)

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await self.stat(path)  # there are no links

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        parts, dataset, rel = await self._lookup(path)
        if rel is not None:
            raise asyncssh.SFTPFailure("Not a directory")
        for name, attrs in ((b".", _attrs()), (b"..", _attrs())):
            yield asyncssh.SFTPName(name, _longname(name, attrs), attrs)
        for child, size in await self._entries(parts, dataset):
            name, attrs = child.encode("utf-8"), _attrs(size)
            yield asyncssh.SFTPName(name, _longname(name, attrs), attrs)

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> _OpenFile:
        if pflags != asyncssh.FXF_READ:
            await self._refuse_write("open for writing", path)
        return await self._open_read(path)

    async def open56(self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs) -> _OpenFile:
        read_only = asyncssh.ACE4_READ_DATA | asyncssh.ACE4_READ_ATTRIBUTES
        if desired_access & ~read_only or flags != asyncssh.FXF_OPEN_EXISTING:
            await self._refuse_write("open for writing", path)
        return await self._open_read(path)

    async def _open_read(self, path: bytes) -> _OpenFile:
        try:
            _, dataset, rel = await self._lookup(path)
        except asyncssh.SFTPNoSuchFile:
            await self._denied("open for reading", path)
            raise
        if dataset is None or rel is None:
            raise asyncssh.SFTPFailure("Is a directory")
        if len(self.open_files) >= MAX_OPEN_FILES:
            raise asyncssh.SFTPFailure(f"at most {MAX_OPEN_FILES} files may be open at once")
        # Decided again for this very file: a copy that has served it already must not be the one to count.
        dataset = await self._dataset(dataset.authorization.dataset.name, rel)
        if dataset is None or rel not in dataset.files:
            await self._denied("open for reading", path)
            raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)
        try:
            # Counts the download (max-downloads, approval, daily bytes) and audits size and SHA-256 first.
            stream, size, _ = await access.download(self.services, dataset.authorization, rel,
                                                    session_id=self.live.id if self.live is not None else "")
        except Refused as exc:
            log.info("datasets: download of %s refused for %s: %s", dataset.authorization.dataset.name,
                     self.identity.name, exc.reason)
            await self._denied("open for reading", path)
            raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE) from None
        except BlobError as exc:
            # Damaged storage is the operator's to see; the user gets a plain failure without blob names.
            log.error("datasets: %s/%s cannot be served: %s", dataset.authorization.dataset.name, rel,
                      exc.safe_message)
            raise asyncssh.SFTPFailure("the file cannot be read") from None
        handle = _OpenFile(stream, dataset.authorization.dataset.name, rel, size)
        self.open_files.add(handle)
        return handle

    async def read(self, file_obj: _OpenFile, offset: int, size: int) -> bytes:
        if file_obj.closed:
            raise asyncssh.SFTPFailure("file is closed")
        try:
            data = await file_obj.stream.read_at(offset, min(size, MAX_READ))
        except Refused:
            # The grant was revoked (or the dataset unpublished, the user disabled) while the file was open;
            # the stop is audited by the serving boundary.
            raise asyncssh.SFTPPermissionDenied("access to this file was revoked") from None
        except BlobError as exc:
            log.error("datasets: %s/%s failed while read: %s", file_obj.dataset, file_obj.path, exc.safe_message)
            raise asyncssh.SFTPFailure("the file cannot be read") from None
        file_obj.served += len(data)
        if self.live is not None:
            self.live.bytes_down += len(data)
        return data

    async def fstat(self, file_obj: _OpenFile) -> asyncssh.SFTPAttrs:
        return _attrs(file_obj.size)

    async def close(self, file_obj: _OpenFile) -> None:
        if file_obj.closed:
            return
        file_obj.closed = True
        self.open_files.discard(file_obj)
        await file_obj.stream.aclose()
        if self.live is not None:
            self.live.recorder.marker(f"sftp download {file_obj.dataset}/{file_obj.path} {file_obj.served} bytes")
        await self.services.audit.emit(Transfer(**self._common(), protocol="sftp", direction="download",
                                                path=f"{file_obj.dataset}/{file_obj.path}", size=file_obj.served))

    def readlink(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)  # there are no links, so none can be followed out

    async def convert_attrs(self, result: Any) -> asyncssh.SFTPAttrs:
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if not isinstance(result, asyncssh.SFTPAttrs):
            raise asyncssh.SFTPFailure("no attributes")
        return result

    def format_user(self, uid: int | None) -> str:
        return "bastion"

    def format_group(self, gid: int | None) -> str:
        return "bastion"

    def format_longname(self, name: asyncssh.SFTPName) -> None:
        name.longname = _longname(name.filename if isinstance(name.filename, bytes) else str(name.filename).encode(),
                                  name.attrs)

    # refused: every change, and whatever would touch the gateway's own filesystem -------------------------

    async def write(self, file_obj: Any, offset: int, data: bytes) -> int:
        await self._refuse_write("write")
        return 0

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._refuse_write("setstat", path)

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._refuse_write("setstat", path)

    async def fsetstat(self, file_obj: Any, attrs: asyncssh.SFTPAttrs) -> None:
        await self._refuse_write("setstat")

    async def remove(self, path: bytes) -> None:
        await self._refuse_write("remove", path)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._refuse_write("rename", oldpath)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._refuse_write("rename", oldpath)

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._refuse_write("mkdir", path)

    async def rmdir(self, path: bytes) -> None:
        await self._refuse_write("rmdir", path)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        await self._refuse_write("symlink", newpath)

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        await self._refuse_write("hardlink", newpath)

    def statvfs(self, path: bytes) -> Any:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported here")

    def fstatvfs(self, file_obj: Any) -> Any:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported here")

    def fsync(self, file_obj: Any) -> None:
        raise asyncssh.SFTPOpUnsupported("fsync is not supported here")

    def lock(self, file_obj: Any, offset: int, length: int, flags: int) -> None:
        raise asyncssh.SFTPOpUnsupported("locking is not supported here")

    def unlock(self, file_obj: Any, offset: int, length: int) -> None:
        raise asyncssh.SFTPOpUnsupported("locking is not supported here")

    def map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)  # never a local path

    def reverse_map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)

    def _to_sftpname(self, *args: Any, **kwargs: Any) -> Any:
        raise asyncssh.SFTPNoSuchFile(NO_SUCH_FILE)

    # end -------------------------------------------------------------------------------------------------

    async def exit(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            for file_obj in list(self.open_files):
                await self.close(file_obj)
        finally:
            if self.live is not None:
                if not self.live.end_reason:
                    self.live.exit_status = 0
                await self.services.sessions.end(self.live, "client closed")
        if self.live is not None and self.live.end_reason:
            return  # ended by the gateway, with status 255
        # scp (over SFTP) judges the transfer by the exit status, as an sftp-server process gives it.
        try:
            self.channel.exit(0)
        except OSError:
            pass


class DatasetsSession(SSHServerStreamSession):
    """A session channel on the `datasets` login: the SFTP subsystem, or a clear refusal."""

    def __init__(self, gateway: "GatewayServer"):
        self.gateway = gateway
        self._server: DatasetsSFTPServer | None = None
        self._lost = False
        super().__init__(self._refuse, self._sftp_server, 3, allow_scp=False)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        # asyncssh ends the SFTP server (exit) only once its handler ran; a channel closed before the client's
        # first SFTP packet never gets there, and its live session must end all the same (exit is idempotent).
        if self._server is not None:
            task = asyncio.get_running_loop().create_task(self._server.exit())
            self.gateway.channels.add(task)
            task.add_done_callback(self.gateway.channels.discard)

    async def _sftp_server(self, chan: asyncssh.SSHServerChannel) -> DatasetsSFTPServer:
        try:
            await asyncio.wait_for(self.gateway.auth_ready.wait(), AUTH_SETTLE_TIMEOUT)
        except asyncio.TimeoutError:
            chan.close()
            raise
        identity = self.gateway.flow.identity
        if identity is None:
            chan.close()
            raise asyncssh.SFTPFailure("not authenticated")
        server = DatasetsSFTPServer(chan, self.gateway, identity)
        try:
            await server.begin()
        except RecordingError:
            chan.close()
            raise asyncssh.SFTPFailure("the session cannot be recorded") from None
        except Exception:
            await server.exit()  # started but not fully: end what was begun (row, recording, registry)
            chan.close()
            raise
        self._server = server
        if self._lost:  # the client left while the session began
            await server.exit()
            raise asyncssh.SFTPFailure("the client closed the channel")
        return server

    async def _refuse(self, stdin: Any, stdout: Any, stderr: Any) -> None:
        chan = stdout.channel
        command, subsystem = chan.get_command(), chan.get_subsystem()
        kind = "exec" if command else f"subsystem {subsystem[:32]}" if subsystem else "shell"
        identity = self.gateway.flow.identity
        if identity is not None:
            await self.gateway.services.audit.emit(SessionDenied(
                actor=identity.name, source=identity.source_addr or "", target=DATASETS_LOGIN, kind=kind,
                reason="the datasets login serves only SFTP"))
        stderr.write((ONLY_SFTP + ("\r\n" if chan.get_terminal_type() else "\n")).encode())
        chan.exit(1)
