"""Writer side of a recording (in the sealer process, or a worker thread): turns events into sealed chunks
and appends them durably."""

from __future__ import annotations

import codecs
import ctypes
import errno
import hashlib
import json
import os
import re
import threading
from time import monotonic
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
# zlib-ng writes zlib streams (not byte for byte those of zlib; readers need nothing else) with SIMD:
# measured here on 64 KiB chunks of source text, level 1 at 5.3 ms/MiB against zlib's 12.2 (output 0.30 of
# the input against 0.25), and Adler-32 18 times faster.
from zlib_ng import zlib_ng

from bastion.recorder import container

# Level 1: the writer has to keep up with bulk transfers; level 3 measured twice its time here for output
# a third smaller.
COMPRESS_LEVEL = 1
# Level 1 is fast on very repetitive output (logs, listings) and shrinks it 10-100x, but slow on text that
# barely compresses (base64, binary dumps: 11 ms/MiB with zlib-ng), saving only a quarter; storing that
# runs 50x faster. A small sample decides per job; both are plain zlib streams.
COMPRESS_SAMPLE = 2048
REPETITIVE = 0.5
# Storing needs no history, and a compressor's set-up allocates and clears one sized by wbits: with the
# default 32 KiB window (and its hash tables) the set-up cost a stored 64 KiB chunk more than the storing,
# 0.6-0.9 ms/MiB on the host of 2026-12-07 against 0.16 with a 512-byte window. The stream is the same
# stored blocks with a smaller window named in its header, which every inflater accepts.
STORE_WBITS = 9
# Up to this much is compressed without a sample: zlib-ng's level 1 takes 2 µs on a few hundred bytes
# (whatever they are), the sample's zlib set-up alone 48 µs; typing makes a small job a second per session.
SMALL_CHUNK = 1024
# A single huge read becomes several events at the same instant, so no line (and so no chunk)
# grows without bound; asciicast players just concatenate them.
MAX_EVENT_BYTES = 64 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Pieces per writev(2) call (the kernel refuses more than IOV_MAX in one); sysconf answers -1 where the
# limit is indeterminate, and 1024 is Linux's.
IOV_MAX = max(os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 0, 0) or 1024
# How far back each write asks the kernel to drop pages already written back (see _release_page_cache).
RECENT_BYTES = 32 * 1024 * 1024

# (seconds since start, "o" | "i" | "r" | "m", raw bytes for o/i or text)
Event = tuple[float, str, "bytes | str"]


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


class GroupSync:
    """Makes every open recording durable with one filesystem sync per interval, not one fdatasync per file.

    With hundreds of live sessions each flushing once a second, one fdatasync per file per second is
    hundreds of journal commits a second, and the writer threads wait on them; syncfs(2) commits all of
    them at once. Where syncfs is missing, sync(2) does the same for every filesystem.

    In the background form (the sealer process, whose one thread serves every recording) the sync runs in
    a thread of its own: a sync that waits for the disk no longer stalls every session's writes. Fail
    closed all the same: a failed background sync fails the next write of every recording open at the
    time (`check`), and a sync that hangs longer than `stall_limit` fails every write while it hangs.
    """

    def __init__(self, interval: Callable[[], float], *, background: bool = False, stall_limit: float = 30.0):
        self._interval = interval  # read at use: the global policy may change recording.flush_interval
        self._background = background
        self._stall_limit = stall_limit
        self._lock = threading.Lock()
        self._synced_at = monotonic()
        self._sync_began: float | None = None
        self._failure: OSError | None = None
        self.failures = 0  # background syncs that failed so far (a writer remembers the count it opened at)
        # Syncs are numbered as they start; `completed` is the number of the last one that finished, so a
        # write that ended when `started` was n is on disk once `completed` > n.
        self.started = 0
        self.completed = 0

    def check(self, failures_seen: int) -> None:
        """Raise if a background sync failed since a writer saw `failures_seen`, or one hangs."""
        failure = self._failure
        if self.failures > failures_seen and failure is not None:
            raise OSError(failure.errno, failure.strerror)
        began = self._sync_began
        if began is not None and monotonic() - began > self._stall_limit:
            raise OSError(errno.ETIMEDOUT, "recording storage is not responding")

    def after_write(self, fd: int) -> None:
        """Called by a writer after its bytes are written: sync the filesystem if the interval is up.

        While another sync runs, skip: the next interval covers these bytes.
        """
        if monotonic() - self._synced_at < self._interval() or not self._lock.acquire(blocking=False):
            return
        if not self._background:
            try:
                self._sync(fd)
            finally:
                self._lock.release()
            return
        try:
            own = os.dup(fd)  # the recording may be closed before the sync runs
            self._sync_began = monotonic()
            threading.Thread(target=self._sync_in_background, args=(own,), name="bastion-syncfs",
                             daemon=True).start()
        except BaseException:
            self._sync_began = None
            self._lock.release()
            raise

    def _sync(self, fd: int) -> None:
        if monotonic() - self._synced_at < self._interval():
            return
        self.started += 1
        number = self.started
        if _SYNCFS is None:
            os.sync()
        elif _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self._synced_at = monotonic()
        self.completed = number

    def _sync_in_background(self, fd: int) -> None:
        try:
            self._sync(fd)
        except OSError as exc:
            self._failure = exc
            self.failures += 1
        finally:
            os.close(fd)
            self._sync_began = None
            self._lock.release()


@dataclass(frozen=True)
class WriteState:
    """What is written: whole chunks, file size, hash of the last chunk (on stable storage within the sync
    interval, or the write fails; a killed process loses nothing of it, a power cut at most that interval)."""

    chunks: int
    size: int
    last_hash: str


def _line(time: float, code: str, text: str) -> bytes:
    # backslashreplace turns a lone surrogate (a file name decoded with surrogateescape) into
    # its JSON \\u escape instead of failing the whole recording.
    return (json.dumps([round(time, 6), code, text], ensure_ascii=False) + "\n").encode(
        "utf-8", "backslashreplace")


# Control characters left after the common escapes; each becomes \u00XX (json.dumps writes \b and \f for
# two of them: the same string once read).
_CONTROL = re.compile(rb"[\x00-\x1f]")
# Every byte that is not a C0 control: printable ASCII, DEL, and the bytes of multibyte UTF-8 characters.
_NOT_CONTROL = bytes(range(0x20, 0x100))


def _whole_characters(data: bytes) -> tuple[bytes, bytes] | None:
    """`data` as whole UTF-8 characters and the start of one more that a read split off (at most 3 bytes,
    held exactly as the incremental decoder holds it), or None if it is not UTF-8 (an invalid byte, an
    overlong form, an encoded surrogate)."""
    if data.isascii():
        return data, b""
    try:
        _, whole = codecs.utf_8_decode(data, "strict", False)  # the decoder's own rule for a split character
    except UnicodeDecodeError:
        return None
    return (data, b"") if whole == len(data) else (data[:whole], data[whole:])


def _text_line(time: float, code: str, data: bytes) -> bytes:
    """The same JSON line as `_line` for whole UTF-8 characters, built on bytes: no str, no re-encode.

    Bulk terminal output is mostly ASCII or valid UTF-8 (box drawing, accented names); the generic path
    costs three passes (decode, json.dumps, encode: 2.95 ms per MiB of UTF-8-heavy output, against 1.22
    here). JSON needs only quotes, backslashes and C0 controls escaped; UTF-8 goes in as it is, as
    json.dumps(ensure_ascii=False) writes it.
    """
    body = (data.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r").replace(b"\t", b"\\t"))
    if body.translate(None, _NOT_CONTROL):  # anything left once the rest is removed is a control
        body = _CONTROL.sub(lambda match: b"\\u%04x" % match.group()[0], body)
    return b"[%s, \"%s\", \"%s\"]\n" % (repr(round(time, 6)).encode(), code.encode(), body)


def worth_compressing(data: bytes) -> bool:
    """Whether `data` compresses well, judged by zlib's level 1 on a small sample of it.

    zlib, not zlib-ng: zlib-ng's level 1 codes with fixed Huffman tables only, which on a 2 KiB sample
    of source text or JSON scores 0.54-0.59 where zlib scores 0.36-0.47, so against the same threshold
    most text was stored. The sample costs 20-50 µs a job, so a small chunk is compressed untested.
    """
    if len(data) <= SMALL_CHUNK:
        return True
    sample = data[:COMPRESS_SAMPLE]
    return len(zlib.compress(sample, COMPRESS_LEVEL)) / max(1, len(sample)) < REPETITIVE


def compress_chunk(data: bytes, compress: bool) -> bytes:
    """A zlib stream of `data`: compressed at COMPRESS_LEVEL if `compress`, stored otherwise."""
    if compress:
        return zlib_ng.compress(data, COMPRESS_LEVEL)
    return zlib_ng.compress(data, 0, STORE_WBITS)


def header_line(width: int, height: int, timestamp: int, term: str, title: str) -> bytes:
    header = {"version": 2, "width": width, "height": height, "timestamp": timestamp,
              "env": {"TERM": term}, "title": title}
    return (json.dumps(header, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


class ChunkWriter:
    """Owns one open container file; its methods run one call at a time (in the sealer, or a worker thread).

    Nothing changes in the chain state until the bytes of a call are on disk, so after a
    failed write the state still describes the last whole chunk.
    """

    def __init__(self, fd: int, session_id: str, data_key: bytes, preamble: bytes, header: bytes,
                 chunk_bytes: int, node_key: Ed25519PrivateKey, group_sync: GroupSync | None = None):
        self._fd = fd
        self._session_id = session_id
        self._aead = AESGCM(data_key)
        self._node_key = node_key
        self._header = header
        self._target = min(chunk_bytes, container.MAX_CHUNK_PLAIN)
        self._seq = 0
        # One sync per interval, not per write job, and shared by every open recording (GroupSync): under
        # bulk output jobs come every few milliseconds, and a sync each would cost more than the sealing.
        self._group_sync = group_sync or GroupSync(lambda: 1.0)
        self._prev_hash = hashlib.sha256(preamble).digest()  # chunk 0 links to the preamble
        self._size = len(preamble)
        # Per direction, so a multibyte character split across reads (or chunks) survives.
        self._decoders = {code: codecs.getincrementaldecoder("utf-8")(errors="replace") for code in "oi"}
        self._uncached = 0  # bytes at the start of the file already dropped from the page cache
        self._advised = 0  # bytes at the start of the file (whole pages) whose write-back has been started
        self._sync_failures_seen = self._group_sync.failures  # syncs that failed before this file was open
        self._sync_mark: tuple[int, int] | None = None  # (file size, GroupSync.started) after a write
        # Set by a failed append or finish: a job queued behind the failed one must not write after it and
        # leave a gap the chain would hide (abandon cuts back to the last whole chunk and seals that).
        self._failed = False

    @property
    def state(self) -> WriteState:
        return WriteState(self._seq, self._size, self._prev_hash.hex())

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def append(self, events: list[Event]) -> WriteState:
        """Seal `events` into chunks and write them (fdatasync at most once per sync interval)."""
        self._refuse_after_failure()
        try:
            self._group_sync.check(self._sync_failures_seen)
            records, seq, prev_hash = self._seal(self._lines(events), final=False)
            if records:
                written = self._write(records, self._group_sync.after_write)
        except BaseException:
            self._failed = True
            raise
        if records:
            self._seq, self._prev_hash, self._size = seq, prev_hash, self._size + written
            self._release_page_cache()
        return self.state

    def finish(self, events: list[Event], *, duration: float, end_reason: str, closed_at: str) -> WriteState:
        """Write the last events and the signed manifest, fsync and close the file."""
        self._refuse_after_failure()
        try:
            lines = list(self._lines(events))
            for code, decoder in self._decoders.items():
                tail = decoder.decode(b"", final=True)
                if tail:
                    lines.append(_line(duration, code, tail))
            records, seq, prev_hash = self._seal(iter(lines), final=True)
            records.append(self._manifest(seq, prev_hash, duration, "sealed", end_reason, closed_at))
            written = self._write(records, os.fsync)
        except BaseException:
            self._failed = True
            raise
        self._seq, self._prev_hash, self._size = seq, prev_hash, self._size + written
        try:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)  # all on disk now
        except OSError:
            pass  # advice only
        self.close_file()
        return self.state

    def abandon(self, *, duration: float, end_reason: str, closed_at: str) -> WriteState:
        """After a failed write: cut back to the last whole chunk and, if the storage lets us,
        seal that prefix with a manifest of status "failed".  Always closes the file."""
        if self._fd < 0:
            return self.state
        try:
            os.ftruncate(self._fd, self._size)
            os.lseek(self._fd, self._size, os.SEEK_SET)
            manifest = self._manifest(self._seq, self._prev_hash, duration, "failed", end_reason, closed_at)
            try:
                self._write([manifest], os.fsync)
                self._size += len(manifest)
            except OSError:
                os.ftruncate(self._fd, self._size)  # leave no partial record behind
            else:
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)  # all on disk now, as after finish
        except OSError:
            pass  # the file stays verifiable up to its last whole chunk; the caller has the reason
        finally:
            self.close_file()
        return self.state

    def _refuse_after_failure(self) -> None:
        if self._failed:
            raise OSError(errno.EIO, "an earlier write of this recording failed")

    def _release_page_cache(self) -> None:
        """Let the kernel reuse the page cache of this recording once its bytes are on their way to disk.

        A recording is written once and read rarely (replay, indexing), so keeping it cached only makes
        the page cache grow; a growing cache takes fresh pages, and on a VM each fresh page can cost a
        host fault: measured here, 0.4-2.4 ms per MiB written, against 0.3 ms when pages are reused.
        POSIX_FADV_DONTNEED starts write-back of dirty pages and drops clean ones, never dirty ones.

        Only pages the writes have filled are advised: an interactive session's job is a few hundred
        bytes, and advising its partial page started one write-back per job per session (the page then
        written again by the next job) and doubled the sealer's CPU per job (69 against 32 µs).
        """
        filled = self._size & ~(PAGE_SIZE - 1)
        try:
            if filled > self._advised:
                # The pages just filled: start their write-back now, so the next sync finds little to do.
                os.posix_fadvise(self._fd, self._advised, filled - self._advised, os.POSIX_FADV_DONTNEED)
                before, self._advised = self._advised, filled
                # The pages filled just before: mostly written back by now, so dropped at once and reused by
                # the next write. Whatever is still dirty stays, and goes once a sync covers it (below).
                low = max(self._uncached, before - RECENT_BYTES) & ~(PAGE_SIZE - 1)
                if before > low:
                    os.posix_fadvise(self._fd, low, before - low, os.POSIX_FADV_DONTNEED)
            self._drop_synced_pages()
        except OSError:
            pass  # advice only: the bytes are written either way

    def _drop_synced_pages(self) -> None:
        """Drop every page a finished sync covers, from where the last such drop ended."""
        sync = self._group_sync
        if self._sync_mark is not None and sync.completed > self._sync_mark[1]:
            end = self._sync_mark[0] & ~(PAGE_SIZE - 1)
            if end > self._uncached:
                os.posix_fadvise(self._fd, self._uncached, end - self._uncached, os.POSIX_FADV_DONTNEED)
                self._uncached = end
            self._sync_mark = None
        if self._sync_mark is None:
            self._sync_mark = (self._size, sync.started)

    def close_file(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _lines(self, events: Iterable[Event]) -> Iterator[bytes]:
        for time, code, data in events:
            if isinstance(data, str):
                yield _line(time, code, data)
                continue
            decoder = self._decoders[code]
            for start in range(0, len(data), MAX_EVENT_BYTES):
                piece = data[start:start + MAX_EVENT_BYTES]
                # Whole characters go on as bytes; a character a read split stays in the decoder for the next.
                split = _whole_characters(decoder.getstate()[0] + piece)
                if split is not None:
                    whole, rest = split
                    decoder.setstate((rest, 0))
                    if whole:
                        yield _text_line(time, code, whole)
                    continue
                text = decoder.decode(piece)
                if text:
                    yield _line(time, code, text)

    def _seal(self, lines: Iterator[bytes], *, final: bool) -> tuple[list[bytes], int, bytes]:
        """Chunks for `lines` as framed records (pieces to write in order), with the chain state after them."""
        seq, prev_hash = self._seq, self._prev_hash
        records: list[bytes] = []
        buffer: list[bytes] = [self._header] if seq == 0 else []
        size, has_events = sum(map(len, buffer)), False
        # Judged once per job, on its first chunk: the sample costs as much as storing a whole chunk, and a
        # job (at most sink.JOB_BYTES of output) is mostly all of one kind.
        compress: bool | None = None

        def seal() -> None:
            nonlocal seq, prev_hash, size, has_events, compress
            plain = b"".join(buffer)
            if compress is None:
                compress = worth_compressing(plain)
            compressed = compress_chunk(plain, compress)
            nonce = os.urandom(container.NONCE_SIZE)
            ciphertext = self._aead.encrypt(nonce, compressed,
                                            container.chunk_aad(self._session_id, seq, prev_hash))
            pieces, record_hash = container.chunk_record(seq, prev_hash, nonce, ciphertext)
            records.extend(pieces)
            seq, prev_hash = seq + 1, record_hash
            buffer.clear()
            size, has_events = 0, False

        for line in lines:
            buffer.append(line)
            size += len(line)
            has_events = True
            if size >= self._target:
                seal()
        # On finish a recording with no events still gets chunk 0, so the header is kept.
        if has_events or (final and seq == 0):
            seal()
        return records, seq, prev_hash

    def _manifest(self, chunks: int, last_hash: bytes, duration: float, status: str,
                  end_reason: str, closed_at: str) -> bytes:
        body = json.dumps({
            "session_id": self._session_id, "chunks": chunks, "last_hash": last_hash.hex(),
            "duration": round(duration, 6), "status": status, "end_reason": end_reason,
            "closed_at": closed_at,
        }, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")
        signature = self._node_key.sign(body)
        return container.frame(container.MANIFEST, container.encode_manifest_payload(body, signature))

    def _write(self, pieces: list[bytes], sync) -> int:
        """Write `pieces` in order (gathered: a job's records are never joined into one copy), then `sync`;
        returns the bytes written."""
        if self._fd < 0:
            raise OSError(errno.EBADF, "recording file is closed")
        views = [memoryview(piece) for piece in pieces if piece]
        total, first = sum(map(len, views)), 0
        while first < len(views):
            written = os.writev(self._fd, views[first:first + IOV_MAX])
            if written <= 0:
                raise OSError(errno.ENOSPC, "short write")
            while first < len(views) and written >= len(views[first]):  # the pieces written whole
                written -= len(views[first])
                first += 1
            if written:
                views[first] = views[first][written:]  # a short write ended inside this piece
        sync(self._fd)
        return total
