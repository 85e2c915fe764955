"""Encrypted, content-addressed blob store: AES-256-GCM in independently authenticated chunks.

File format (`<blob_dir>/<sha256[:2]>/<sha256>`, mode 0600):

    header  32 bytes   magic b"BSTNBLB1" | chunk size (u32 BE) | plaintext size (u64 BE) | 12 zero bytes
    chunk i            AES-256-GCM(key, nonce = 4 zero bytes | i (u64 BE),
                                   aad = magic | chunk size | i (u64 BE) | final (1 byte))
                       = ciphertext (chunk size bytes; the last chunk holds the rest) | 16-byte tag

Every blob has its own random key, stored only wrapped by the vault (context b"blob:" + sha256 hex) in
the `blobs` row. There are max(1, ceil(size / chunk size)) chunks; a zero-byte blob is one empty final
chunk. Because each chunk carries its index and whether it is the last, chunks cannot be reordered,
dropped or appended without failing authentication, and a reader can seek to any chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import io
import os
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bastion.errors import BastionError
from bastion.publish.errors import BlobError, InputError
from bastion.store.models import Blob
from bastion.vault import Vault
from bastion.privatefiles import fsync_dir

MAGIC = b"BSTNBLB1"
HEADER = struct.Struct(">8sIQ12x")
TAG = 16
DEFAULT_CHUNK = 1 << 20
MIN_CHUNK, MAX_CHUNK = 256, 16 << 20
_T = TypeVar("_T")


def key_context(sha256: str) -> bytes:
    """Vault context binding a wrapped blob key to the content it encrypts."""
    return b"blob:" + sha256.encode()


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def stored_length(size: int, chunk_size: int) -> int:
    """Bytes the encrypted file of a `size`-byte plaintext takes."""
    return HEADER.size + size + chunk_count(size, chunk_size) * TAG


def _nonce(index: int) -> bytes:
    return struct.pack(">4xQ", index)


def _aad(chunk_size: int, index: int, final: bool) -> bytes:
    return MAGIC + struct.pack(">IQB", chunk_size, index, final)


async def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Run blocking work in a thread; if cancelled, wait for that work so cleanup never races it."""
    future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved, so it is not reported as unhandled; the cancel wins
        raise


# --- writing ---------------------------------------------------------------------------------------------


class _Sealer:
    """Encrypts a plaintext stream chunk by chunk into a temporary file (blocking; run in a thread)."""

    def __init__(self, tmp_dir: Path, chunk_size: int):
        self.chunk_size = chunk_size
        self.key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(self.key)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="blob-", suffix=".part")  # 0600
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._file.write(HEADER.pack(MAGIC, chunk_size, 0))
        self._buffer = bytearray()
        self._index = 0
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)
        self._buffer += data
        # Keep one full chunk back: only end-of-input tells whether it is the final one.
        while len(self._buffer) > self.chunk_size:
            self._seal(bytes(self._buffer[:self.chunk_size]), final=False)
            del self._buffer[:self.chunk_size]

    def _seal(self, plaintext: bytes, final: bool) -> None:
        self._file.write(self._aead.encrypt(_nonce(self._index), plaintext, _aad(self.chunk_size, self._index, final)))
        self._index += 1

    def finish(self) -> str:
        self._seal(bytes(self._buffer), final=True)
        self._buffer = bytearray()
        self._file.seek(0)
        self._file.write(HEADER.pack(MAGIC, self.chunk_size, self.size))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Staged:
    """Encrypted content in a temporary file, not yet in the store (no row, no final path)."""

    sha256: str
    size: int
    wrapped_key: bytes
    chunk_size: int
    tmp_path: Path
    _key: bytes = field(repr=False)

    def reader(self) -> "BlobReader":
        """Read the staged plaintext back (validation before it is committed)."""
        return BlobReader(self.tmp_path, self._key, self.size, f"upload {self.sha256[:12]}")

    def discard(self) -> None:
        self.tmp_path.unlink(missing_ok=True)


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _open_regular(path: str | os.PathLike) -> io.BufferedReader:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError("no such file") from None
    except IsADirectoryError:
        raise InputError("not a regular file") from None
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or type(exc).__name__}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device would never end
        os.close(fd)
        raise InputError("not a regular file")
    os.set_blocking(fd, True)
    return open(fd, "rb")


async def _pieces(source: Any, chunk_size: int) -> AsyncIterator[bytes]:
    """Bounded pieces of `source`: a path, a sync or async file-like object, or an (async) iterable of bytes."""
    if _is_path(source):
        handle = await in_thread(_open_regular, source)
        try:
            while piece := await in_thread(handle.read, chunk_size):
                yield piece
        finally:
            handle.close()
        return
    read_chunk = getattr(source, "read_chunk", None)  # aiohttp BodyPartReader: read() would buffer it all
    read = getattr(source, "read", None)
    if read_chunk is not None and inspect.iscoroutinefunction(read_chunk):
        while piece := await read_chunk(chunk_size):
            yield bytes(piece)
    elif read is not None and inspect.iscoroutinefunction(read):
        while piece := await read(chunk_size):
            yield bytes(piece)
    elif read is not None:
        while piece := await in_thread(read, chunk_size):
            yield bytes(piece)
    elif hasattr(source, "__aiter__"):
        async for piece in source:
            for start in range(0, len(piece), chunk_size):
                yield bytes(piece[start:start + chunk_size])
    elif hasattr(source, "__iter__") and not isinstance(source, (bytes, bytearray, memoryview, str)):
        for piece in source:
            for start in range(0, len(piece), chunk_size):
                yield bytes(piece[start:start + chunk_size])
    else:
        raise TypeError("a blob source is a path, a file-like object or an iterable of bytes")


# --- reading ---------------------------------------------------------------------------------------------


class BlobReader(io.RawIOBase):
    """A seekable, read-only plaintext view of one blob file; each chunk is authenticated when read."""

    def __init__(self, path: Path, key: bytes, size: int, label: str):
        super().__init__()
        self.label = label
        self.size = size
        try:
            self._file = open(path, "rb")
        except FileNotFoundError:
            raise BlobError(f"{label} is missing from the blob store") from None
        except OSError as exc:
            raise BlobError(f"{label} cannot be opened: {exc.strerror or type(exc).__name__}") from None
        try:
            magic, chunk_size, stored_size = HEADER.unpack(self._file.read(HEADER.size).ljust(HEADER.size, b"\0"))
            if magic != MAGIC or not MIN_CHUNK <= chunk_size <= MAX_CHUNK or stored_size != size:
                raise BlobError(f"{label}: the header is damaged or does not match the catalog")
            if os.fstat(self._file.fileno()).st_size != stored_length(size, chunk_size):
                raise BlobError(f"{label}: the file has the wrong length (truncated or extended)")
        except BaseException:
            self._file.close()
            raise
        self.chunk_size = chunk_size
        self.chunks = chunk_count(size, chunk_size)
        self._aead = AESGCM(key)
        self._pos = 0
        self._cached: tuple[int, bytes] = (-1, b"")

    def chunk(self, index: int) -> bytes:
        """Plaintext of chunk `index`, authenticated (the last one read is kept for small sequential reads)."""
        if self._cached[0] == index:
            return self._cached[1]
        if not 0 <= index < self.chunks:
            raise ValueError("chunk index out of range")
        length = self.chunk_size if index < self.chunks - 1 else self.size - index * self.chunk_size
        # pread, not seek+read: range reads (SFTP) may run in several threads at once.
        sealed = os.pread(self._file.fileno(), length + TAG, HEADER.size + index * (self.chunk_size + TAG))
        try:
            plain = self._aead.decrypt(_nonce(index), sealed,
                                       _aad(self.chunk_size, index, index == self.chunks - 1))
        except InvalidTag:
            raise BlobError(f"{self.label}: chunk {index} failed authentication (damaged or tampered with)") \
                from None
        self._cached = (index, plain)
        return plain

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self.size:
            return 0
        index = self._pos // self.chunk_size
        data = self.chunk(index)
        start = self._pos - index * self.chunk_size
        count = min(len(buffer), len(data) - start)
        buffer[:count] = data[start:start + count]
        self._pos += count
        return count

    def pread(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer at the end), without moving the stream position."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        out = bytearray()
        end = min(self.size, offset + length)
        while offset < end:
            index = offset // self.chunk_size
            data = self.chunk(index)
            start = offset - index * self.chunk_size
            piece = data[start:start + end - offset]
            out += piece
            offset += len(piece)
        return bytes(out)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            self._cached = (-1, b"")
        super().close()


# --- the store -------------------------------------------------------------------------------------------


def blob_dir(config: Any) -> Path:
    return Path(config["publish.blob_dir"] or Path(config.data_dir) / "blobs")


class _Placer:
    """Moves staged blobs into the store inside the caller's transaction; undone if that transaction fails."""

    def __init__(self, store: "BlobStore", db: AsyncSession, now: Any):
        self._store = store
        self._db = db
        self._now = now
        self._placed: list[tuple[Path, Staged]] = []

    async def place(self, staged: Staged) -> bool:
        """Make `staged` part of the store; False when the same content was already there (deduplicated)."""
        final = self._store.path(staged.sha256)
        row = await self._db.get(Blob, staged.sha256)
        if row is not None and final.is_file():
            return False
        if row is None:
            self._db.add(Blob(sha256=staged.sha256, size=staged.size, wrapped_key=staged.wrapped_key,
                              created_at=self._now))
        else:  # the row survived but its file did not: this copy repairs it
            row.size, row.wrapped_key = staged.size, staged.wrapped_key
        # The row first: a concurrent writer of the same content now waits on it (or fails), so only
        # one file is ever renamed into this place under one row.
        await self._db.flush()
        await BlobStore._write(self._store._install, staged.tmp_path, final)
        self._placed.append((final, staged))
        return True

    def undo(self) -> None:
        """Move placed files back to their staging names (the caller may retry, or discard them)."""
        for final, staged in reversed(self._placed):
            with contextlib.suppress(OSError):
                os.rename(final, staged.tmp_path)
        self._placed.clear()


class BlobStore:
    """Blob files under one directory, their rows in the database, their keys wrapped by the vault."""

    def __init__(self, root: Path, sessionmaker: async_sessionmaker, vault: Vault, clock: Any,
                 max_bytes: int, chunk_size: int = DEFAULT_CHUNK):
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise ValueError("chunk size out of range")
        self.root = Path(root)
        self._db = sessionmaker
        self._vault = vault
        self._clock = clock
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size

    @classmethod
    def from_services(cls, services: Any, chunk_size: int = DEFAULT_CHUNK) -> "BlobStore":
        config = services.config
        return cls(blob_dir(config), services.db, services.vault, services.clock,
                   config["publish.max_file_bytes"], chunk_size)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BlobError("not a blob name")
        return self.root / sha256[:2] / sha256

    def _dirs(self) -> Path:
        # Each level gets 0700 itself (mkdir's mode does not reach parents it creates).
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        tmp = self.root / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        return tmp

    def _install(self, tmp_path: Path, final: Path) -> None:
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(tmp_path, final)
        fsync_dir(final.parent)  # the rename itself must survive a crash once the row is committed

    async def stage(self, source: Any, *, expected_size: int | None = None) -> Staged:
        """Encrypt `source` into a temporary file, streaming; refuses oversize and cut-off input."""
        if expected_size is not None and expected_size > self.max_bytes:
            raise InputError(f"the file is larger than publish.max_file_bytes ({self.max_bytes} bytes)")
        try:
            tmp_dir = await in_thread(self._dirs)
            sealer = await in_thread(_Sealer, tmp_dir, self.chunk_size)
        except OSError as exc:
            raise BlobError(f"the blob store cannot be written: {exc.strerror or type(exc).__name__}") from None
        pieces = _pieces(source, self.chunk_size)
        try:
            while True:
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    break
                except (BastionError, asyncio.CancelledError, TypeError):
                    raise
                except Exception as exc:
                    # The source broke off (connection reset, I/O error): name the kind, never its data.
                    raise InputError(f"reading the input failed ({type(exc).__name__}); nothing was stored") \
                        from exc
                if sealer.size + len(piece) > self.max_bytes:
                    raise InputError(f"the file is larger than publish.max_file_bytes ({self.max_bytes} bytes)")
                if expected_size is not None and sealer.size + len(piece) > expected_size:
                    raise InputError("the input is longer than its declared size; nothing was stored")
                await self._write(sealer.write, piece)
            if expected_size is not None and sealer.size != expected_size:
                raise InputError(f"the input was cut off after {sealer.size} of {expected_size} bytes; "
                                 "nothing was stored")
            sha256 = await self._write(sealer.finish)
        except BaseException:
            await in_thread(sealer.abort)
            raise
        finally:
            await pieces.aclose()
        return Staged(sha256, sealer.size, self._vault.wrap_key(sealer.key, key_context(sha256)),
                      self.chunk_size, sealer.path, sealer.key)

    @staticmethod
    async def _write(fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return await in_thread(fn, *args)
        except OSError as exc:
            raise BlobError(f"the blob store cannot be written: {exc.strerror or type(exc).__name__}") from None

    @contextlib.asynccontextmanager
    async def placing(self, db: AsyncSession) -> AsyncIterator[_Placer]:
        """Use inside `db.begin()`: files placed are moved out again if the block fails (before the rollback,
        while this transaction still holds the rows, so no other writer's file is touched)."""
        placer = _Placer(self, db, self._clock.now())
        try:
            yield placer
        except BaseException:
            placer.undo()
            raise

    async def put(self, source: Any, *, expected_size: int | None = None) -> tuple[str, int]:
        """Store `source`; returns (sha256 of the plaintext, size). Identical content is stored once."""
        from sqlalchemy.exc import IntegrityError

        staged = await self.stage(source, expected_size=expected_size)
        try:
            for attempt in (1, 2):
                try:
                    async with self._db() as db, db.begin():
                        async with self.placing(db) as placer:
                            await placer.place(staged)
                    break
                except IntegrityError:
                    if attempt == 2:  # a concurrent writer stored the same content: it is there now
                        raise BlobError("the blob store is busy; try again") from None
        finally:
            staged.discard()
        return staged.sha256, staged.size

    async def open(self, sha256: str) -> BlobReader:
        """A reader for a stored blob (checks its row, key, header and length)."""
        path = self.path(sha256)
        async with self._db() as db:
            row = await db.get(Blob, sha256)
        if row is None:
            raise BlobError(f"blob {sha256[:12]} is not in the catalog")
        key = self._vault.unwrap_key(row.wrapped_key, key_context(sha256))
        return await in_thread(BlobReader, path, key, row.size, f"blob {sha256[:12]}")

    async def iter(self, sha256: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Plaintext of a blob (or of a byte range of it) in chunks of at most the chunk size."""
        reader = await self.open(sha256)
        try:
            async for piece in iter_reader(reader, offset, length):
                yield piece
        finally:
            reader.close()


async def iter_reader(reader: BlobReader, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
    """Chunk-sized pieces of `reader` from `offset` (up to `length` bytes), decrypted in a thread."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError("negative offset or length")
    end = reader.size if length is None else min(reader.size, offset + length)
    while offset < end:
        want = min(reader.chunk_size - offset % reader.chunk_size, end - offset)
        piece = await in_thread(reader.pread, offset, want)
        offset += len(piece)
        yield piece


# --- the interface the brief names ----------------------------------------------------------------------


async def put(services: Any, stream_or_path: Any, *, expected_size: int | None = None) -> tuple[str, int]:
    """Store a file or stream as an encrypted blob; returns (sha256, size)."""
    return await BlobStore.from_services(services).put(stream_or_path, expected_size=expected_size)


async def open_reader(services: Any, sha256: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
    """Yield the plaintext of a blob (from `offset`, up to `length` bytes), one authenticated chunk at a time."""
    async for piece in BlobStore.from_services(services).iter(sha256, offset, length):
        yield piece
