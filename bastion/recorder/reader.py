"""Reading recordings back: verify a container (offline, with only the node key) and decrypt it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from zlib_ng import zlib_ng

from bastion.errors import RecordingError, VaultError
from bastion.recorder import container
from bastion.recorder.container import CHUNK, MANIFEST, ContainerError, Preamble, TruncatedRecord
from bastion.vault import Vault


@dataclass(frozen=True)
class VerifyReport:
    """The verdict on one recording file.

    status: "sealed" (complete, signed, every link checked), "failed" (signed, but the writer
    hit a storage error: complete up to `chunks`), "unsealed" (no manifest: the gateway
    crashed or is still writing), "truncated" (ends inside a record: cut mid-write),
    "corrupt" (altered, reordered, or not a recording).  `chunks` counts the chunks that
    verified, from the start; `first_bad_chunk` is the index of the first one that did not.
    """

    ok: bool
    status: str
    chunks: int
    first_bad_chunk: int | None
    reason: str
    duration: float | None = None
    session_id: str | None = None
    last_hash: str = ""
    size: int = 0
    end_reason: str | None = None

    def describe(self) -> str:
        if self.first_bad_chunk is None:
            return f"{self.status}: {self.reason}"
        return f"{self.status} at chunk {self.first_bad_chunk}: {self.reason}"


@dataclass(frozen=True)
class _Link:
    seq: int
    prev_hash: bytes
    hash: bytes
    authentic: bool | None  # None when checked without the vault


@dataclass(frozen=True)
class _End:
    """How the record stream ended, when not cleanly."""

    kind: str  # truncated | malformed | after_manifest
    reason: str
    record_type: bytes | None = None


def _open_file(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise RecordingError("recording file not found") from None
    except IsADirectoryError:
        raise RecordingError("recording path is a directory") from None
    except OSError as exc:
        raise RecordingError(f"recording file cannot be read ({exc.strerror})") from None


def _data_key(preamble: Preamble, vault: Vault) -> AESGCM:
    try:
        return AESGCM(vault.unwrap_key(preamble.wrapped_key, container.key_context(preamble.session_id)))
    except VaultError:
        raise RecordingError("the recording key does not open with this vault "
                             "(another master key, or the preamble was altered)") from None


def _decrypt(aead: AESGCM, session_id: str, chunk: container.ChunkFields) -> bytes | None:
    try:
        return aead.decrypt(chunk.nonce, chunk.ciphertext, container.chunk_aad(session_id, chunk.seq, chunk.prev_hash))
    except InvalidTag:
        return None


def _chunk_lines(compressed: bytes) -> list[str] | None:
    """The asciicast lines of a decrypted chunk, or None if it does not decode as one."""
    inflater = zlib_ng.decompressobj()  # zlib streams; zlib-ng inflates them about twice as fast
    try:
        plain = inflater.decompress(compressed, container.MAX_DECOMPRESSED)
    except zlib_ng.error:
        return None
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        return None
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        return None
    return text[:-1].split("\n")


def _scan(stream: BinaryIO, preamble: Preamble, aead: AESGCM | None,
          size: int) -> tuple[list[_Link], container.Manifest | None, _End | None]:
    links: list[_Link] = []
    manifest: container.Manifest | None = None
    try:
        for record in container.read_records(stream, len(preamble.raw), size):
            if manifest is not None:
                return links, manifest, _End("after_manifest", "data follows the manifest")
            if record.type == CHUNK:
                try:
                    chunk = container.parse_chunk(record.payload)
                except ContainerError as exc:
                    return links, manifest, _End("malformed", exc.safe_message)
                authentic = None if aead is None else _decrypt(aead, preamble.session_id, chunk) is not None
                links.append(_Link(chunk.seq, chunk.prev_hash, container.record_hash(CHUNK, record.payload),
                                   authentic))
            elif record.type == MANIFEST:
                try:
                    manifest = container.parse_manifest(record.payload)
                except ContainerError as exc:
                    return links, None, _End("malformed", exc.safe_message)
            else:
                return links, manifest, _End("malformed", f"unknown record type {record.type!r}")
    except TruncatedRecord as exc:
        return links, manifest, _End("truncated", exc.safe_message, exc.record_type)
    except ContainerError as exc:
        return links, manifest, _End("malformed", exc.safe_message)
    return links, manifest, None


def _judge(preamble: Preamble, links: list[_Link], manifest: container.Manifest | None, end: _End | None,
           public_key: Ed25519PublicKey, size: int) -> VerifyReport:
    def report(status: str, chunks: int, bad: int | None, reason: str, **extra) -> VerifyReport:
        last = links[chunks - 1].hash if chunks else preamble.hash
        return VerifyReport(ok=status == "sealed", status=status, chunks=chunks, first_bad_chunk=bad,
                            reason=reason, session_id=preamble.session_id, last_hash=last.hex(), size=size,
                            **extra)

    # The signature comes first: a genuine manifest vouches for the hash of the last chunk.
    signed: dict | None = None
    manifest_problem = None
    if manifest is not None:
        try:
            public_key.verify(manifest.signature, manifest.signed_json)
        except InvalidSignature:
            manifest_problem = ("the manifest signature does not verify with the node key "
                                "(manifest altered, or signed by another key)")
        else:
            manifest_problem = container.manifest_problem(manifest.fields)
            signed = None if manifest_problem else manifest.fields

    expected = preamble.hash
    for index, link in enumerate(links):
        if link.seq != index:
            if link.seq < index:
                reason = f"chunk {link.seq} appears again at position {index} (duplicated or replayed)"
            else:
                reason = f"chunk {index} is missing or out of order (chunk {link.seq} stands in its place)"
            return report("corrupt", index, index, reason)
        if link.prev_hash != expected:
            # Either what came before changed, or this chunk's own link did.  If the next link
            # (or the signed manifest) still vouches for this chunk, the one before it changed.
            if index + 1 < len(links):
                vouched = links[index + 1].prev_hash == link.hash
            else:
                vouched = (signed is not None and signed["chunks"] == index + 1
                           and signed["last_hash"] == link.hash.hex())
            if vouched and index == 0:
                return report("corrupt", 0, None, "the preamble was altered (chunk 0 does not follow it)")
            if vouched:
                return report("corrupt", index - 1, index - 1,
                              f"chunk {index - 1} was altered (its hash does not match the link in chunk {index})")
            before = "the preamble" if index == 0 else f"chunk {index - 1}"
            return report("corrupt", index, index, f"chunk {index} was altered or does not follow {before}")
        if link.authentic is False:
            return report("corrupt", index, index, f"chunk {index} failed authentication (altered)")
        expected = link.hash

    count = len(links)
    if end is not None and end.kind == "truncated":
        where = "the manifest" if end.record_type == MANIFEST else f"chunk {count}"
        return report("truncated", count, None if end.record_type == MANIFEST else count,
                      f"the file ends inside {where} (cut off mid-write)")
    if end is not None and end.kind == "malformed":
        return report("corrupt", count, count, f"record after chunk {count - 1}: {end.reason}" if count
                      else f"first record: {end.reason}")
    if manifest is None:
        return report("unsealed", count, None,
                      "no manifest: the recording was never closed (gateway crash, or still being written)")
    if manifest_problem is not None or signed is None:
        return report("corrupt", count, None, manifest_problem or "the manifest is malformed")
    if end is not None:  # after_manifest
        return report("corrupt", count, None, end.reason)
    if signed["session_id"] != preamble.session_id:
        return report("corrupt", count, None, "the manifest belongs to another session")
    if signed["chunks"] > count:
        return report("corrupt", count, count,
                      f"chunk {count} is missing: the manifest lists {signed['chunks']} chunks, the file holds {count}")
    if signed["chunks"] < count:
        return report("corrupt", signed["chunks"], signed["chunks"],
                      f"chunk {signed['chunks']} is not in the manifest (chunks were added)")
    if signed["last_hash"] != expected.hex():
        if count == 0:
            return report("corrupt", 0, None, "the preamble was altered (it does not match the manifest)")
        return report("corrupt", count - 1, count - 1,
                      f"chunk {count - 1} was altered (its hash does not match the manifest)")
    status = signed["status"]
    reason = ("complete: signature and every chunk verified" if status == "sealed"
              else f"sealed after a write failure; the chunks written before it verified ({signed['end_reason']})")
    return report(status, count, None, reason, duration=float(signed["duration"]), end_reason=signed["end_reason"])


def verify(path: str | os.PathLike[str], node_public_key: Ed25519PublicKey, *,
           vault: Vault | None = None) -> VerifyReport:
    """Check a recording without trusting any of it.

    With only the node's public key this checks framing, order, the hash chain and the
    manifest signature.  With the vault too, each chunk's AES-GCM tag is checked as well,
    which names an altered chunk exactly, even in the unsigned tail of an unsealed file.
    Raises RecordingError only when the file cannot be read, or the vault does not open it.
    """
    with _open_file(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        try:
            preamble = container.read_preamble(stream)
        except ContainerError as exc:
            return VerifyReport(ok=False, status="corrupt", chunks=0, first_bad_chunk=None,
                                reason=exc.safe_message, size=size)
        aead, key_problem = None, None
        if vault is not None:
            try:
                aead = _data_key(preamble, vault)
            except RecordingError as exc:
                key_problem = exc
        links, manifest, end = _scan(stream, preamble, aead, size)
    result = _judge(preamble, links, manifest, end, node_public_key, size)
    if key_problem is not None and result.status != "corrupt":
        raise key_problem  # the file is intact, so the vault is the wrong one
    return result


def iter_lines(path: str | os.PathLike[str], vault: Vault, node_public_key: Ed25519PublicKey, *,
               force: bool = False) -> Iterator[str]:
    """Yield the decrypted asciicast lines (header first, no trailing newlines).

    Without `force` a recording that does not verify raises RecordingError before any line;
    with it, the lines of the chunks that verify are yielded and reading stops at the first
    bad one.
    """
    report = verify(path, node_public_key)
    if not report.ok and not force:
        raise RecordingError(f"recording failed verification: {report.describe()}")
    if report.chunks:
        yield from read_verified_lines(path, vault, report.chunks, force=force)


def read_verified_lines(path: str | os.PathLike[str], vault: Vault, limit: int, *,
                        force: bool = False) -> Iterator[str]:
    """Decrypt the first `limit` chunks, re-checking each one's place in the chain and its tag
    (the file may have changed since it was verified); stop or raise at the first bad one."""
    with _open_file(path) as stream:
        try:
            preamble = container.read_preamble(stream)
        except ContainerError as exc:
            raise RecordingError(f"recording cannot be read: {exc.safe_message}") from None
        aead = _data_key(preamble, vault)
        expected, index = preamble.hash, 0
        records = container.read_records(stream, len(preamble.raw), os.fstat(stream.fileno()).st_size)
        while index < limit:
            problem, lines = None, None
            try:
                record = next(records, None)
            except ContainerError as exc:
                record, problem = None, exc.safe_message
            if record is None or record.type != CHUNK:
                problem = problem or "the file changed while it was read"
            else:
                try:
                    chunk = container.parse_chunk(record.payload)
                except ContainerError as exc:
                    chunk, problem = None, exc.safe_message
                if chunk is not None and (chunk.seq != index or chunk.prev_hash != expected):
                    problem = "it does not follow the chunk before it"
                elif chunk is not None:
                    compressed = _decrypt(aead, preamble.session_id, chunk)
                    lines = None if compressed is None else _chunk_lines(compressed)
                    if compressed is None:
                        problem = "it failed authentication (altered)"
                    elif lines is None:
                        problem = "it does not hold asciicast lines"
            if problem is not None:
                if force:
                    return
                raise RecordingError(f"recording cannot be read at chunk {index}: {problem}")
            yield from lines
            expected, index = container.record_hash(CHUNK, record.payload), index + 1

